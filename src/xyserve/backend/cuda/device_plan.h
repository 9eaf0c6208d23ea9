// The per-step plan on the device: token ids, positions, KV slots, the request table, block
// tables, draft-tree parents, logits rows, the attention work lists (one per distinct window)
// and the KV copies and moves, packed into one pinned host buffer and uploaded with ONE
// cudaMemcpyAsync (DESIGN.md "Plan once, run many"; FlashInfer's plan/run split). Every layer
// runs from the same upload.
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
    int32_t num_tasks = 0;
    const meta::MergeGroup* merges = nullptr;
    int32_t num_merges = 0;
    int32_t num_partials = 0;
  };
  std::vector<Attention> attention;  // one per distinct window
  const Attention& for_window(int32_t window) const;
};

class DevicePlan {
 public:
  DevicePlan();
  // Packs `plan` and the work lists (window, list) into the pinned buffer and enqueues one copy
  // on `stream`. Waits first for the previous upload's copy to finish (the pinned buffer is
  // reused). Preconditions: the plan passed the backend's checks.
  const DevicePlanView& upload(const meta::StepPlan& plan,
                               const std::vector<std::pair<int32_t, meta::AttentionWorkList>>& lists,
                               cudaStream_t stream);
  size_t last_upload_bytes() const { return last_bytes_; }

 private:
  PinnedBuffer<std::byte> host_;
  DeviceBuffer<std::byte> device_;
  Event copied_;
  bool pending_ = false;
  size_t last_bytes_ = 0;
  DevicePlanView view_;
};

}  // namespace xy::cuda
