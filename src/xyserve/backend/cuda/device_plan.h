// The per-step plan on the device: token ids, positions, KV slots, the request table, block
// tables, draft-tree parents, logits rows, the attention work lists (one per distinct window)
// and the KV copies and moves, packed into one pinned host buffer and uploaded with ONE
// cudaMemcpyAsync (DESIGN.md "Plan once, run many"; FlashInfer's plan/run split). Every layer
// runs from the same upload.
//
// For CUDA graphs, a decode-only step is packed instead into a PaddedPlan: the step padded to
// its bucket's row count, every section at an offset fixed by the bucket's capacities, and the
// attention task and merge counts in device memory, so that the pointers and launch shapes a
// captured graph holds are right for every later step of the bucket.
//
// Threading: engine thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "xyserve/backend/cuda/device_buffer.h"
#include "xyserve/backend/cuda/kernels/kernels.h"
#include "xyserve/meta/attention_work_list.h"
#include "xyserve/meta/step_plan.h"

namespace xy::cuda {

// Device pointers into the uploaded plan, valid until the next upload.
struct DevicePlanView {
  int32_t num_rows = 0;
  int32_t num_logits_rows = 0;
  const int32_t* token_ids = nullptr;    // [M]
  const int32_t* positions = nullptr;    // [M]
  const int32_t* kv_slots = nullptr;     // [M]: block * block_size + offset of each row's KV
  const PlanRequest* requests = nullptr;
  const int32_t* block_tables = nullptr;
  const int32_t* tree_parents = nullptr;
  const int32_t* logits_rows = nullptr;  // [num_logits_rows]: rows that need logits, in plan order
  const meta::KvBlockCopy* kv_copies = nullptr;
  int32_t num_kv_copies = 0;
  const meta::KvSlotMove* kv_moves = nullptr;
  int32_t num_kv_moves = 0;
  struct Attention {
    int32_t window = 0;
    const meta::AttentionTask* tasks = nullptr;
    int32_t num_tasks = 0;  // with task_count: the capacity of `tasks`
    const meta::MergeGroup* merges = nullptr;
    int32_t num_merges = 0;  // with merge_count: the capacity of `merges`
    int32_t num_partials = 0;
    // Padded plans only: the step's counts, on the device (AttentionArgs::task_count).
    const int32_t* task_count = nullptr;
    const int32_t* merge_count = nullptr;
  };
  std::vector<Attention> attention;  // one per distinct window
  const Attention& for_window(int32_t window) const;
};

using WorkLists = std::vector<std::pair<int32_t, meta::AttentionWorkList>>;  // (window, list)

// The device plan of one CUDA-graph bucket: room for a decode-only step of up to rows()
// requests padded to rows() rows, at offsets that move only when a capacity grows.
class PaddedPlan {
 public:
  explicit PaddedPlan(int32_t rows) : rows_(rows) {}
  int32_t rows() const { return rows_; }
  // Grows the capacities (by doubling what is needed) and reallocates the device buffer when
  // `plan` and `lists` do not fit; returns true when it did, which invalidates every pointer a
  // graph captured over the old buffer holds. Precondition: plan.requests.size() <= rows().
  bool reserve(const meta::StepPlan& plan, const WorkLists& lists);

 private:
  friend class DevicePlan;
  struct Capacity {
    size_t table = 0, copies = 0, moves = 0;
    std::vector<std::pair<size_t, size_t>> work;  // per list: tasks, merges
  };
  struct Offsets {
    size_t counts = 0, ids = 0, pos = 0, slots = 0, logits = 0, requests = 0, table = 0,
           copies = 0, moves = 0, bytes = 0;
    std::vector<std::pair<size_t, size_t>> work;  // per list: tasks, merges
  };
  Offsets layout() const;

  int32_t rows_ = 0;
  Capacity cap_;
  Offsets off_;
  DeviceBuffer<std::byte> device_;
};

// Points `args` at the uploaded plan's rows, requests, block tables and tree parents and at
// `work`'s tasks (with its device-side task count when the plan is padded for a CUDA graph).
inline void bind_attention_plan(AttentionArgs& args, const DevicePlanView& view,
                                const DevicePlanView::Attention& work) {
  args.positions = view.positions;
  args.requests = view.requests;
  args.block_tables = view.block_tables;
  args.tree_parents = view.tree_parents;
  args.tasks = work.tasks;
  args.num_tasks = work.num_tasks;
  args.task_count = work.task_count;
}

class DevicePlan {
 public:
  DevicePlan();
  // Packs `plan` and the work lists (window, list) into the pinned buffer and enqueues one copy
  // on `stream`. Waits first for the previous upload's copy to finish (the pinned buffer is
  // reused). Preconditions: the plan passed the backend's checks.
  const DevicePlanView& upload(const meta::StepPlan& plan, const WorkLists& lists, cudaStream_t stream);
  // Packs a decode-only step (every request one new row with logits, no tree) into `target`,
  // padded to target.rows() rows: a padding row reads token 0 at position 0, writes its KV to
  // `trash_slot` (a slot no block table names) and has logits row index = itself, which nobody
  // reads; padding rows get no attention tasks. The view's row and logits counts are rows(),
  // its task and merge counts capacities, with the step's counts behind task_count and
  // merge_count. Preconditions: the plan passed the backend's checks; target.reserve(plan,
  // lists) was called for this plan.
  const DevicePlanView& upload_padded(const meta::StepPlan& plan, const WorkLists& lists, PaddedPlan& target,
                                      int32_t trash_slot, cudaStream_t stream);
  size_t last_upload_bytes() const { return last_bytes_; }

 private:
  // Waits for the previous upload's copy to leave the pinned buffer, then makes it `bytes` long.
  std::byte* host_buffer(size_t bytes);
  void copy_to_device(std::byte* dst, size_t bytes, cudaStream_t stream);

  PinnedBuffer<std::byte> host_;
  DeviceBuffer<std::byte> device_;
  Event copied_;
  bool pending_ = false;
  size_t last_bytes_ = 0;
  DevicePlanView view_;
};

}  // namespace xy::cuda
