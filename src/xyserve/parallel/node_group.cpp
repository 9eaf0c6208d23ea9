#include "xyserve/parallel/node_group.h"

#include <algorithm>
#include <chrono>

#include "xyserve/common/check.h"
#include "xyserve/parallel/step_plan_codec.h"
#include "xyserve/parallel/wire_format.h"

namespace xy::parallel {
namespace {

// The messages between node 0 and another node after the rendezvous, one frame each, the
// first byte saying which:
//   node k -> 0: ready  = kReady, num_kv_blocks i32, vocab_size i64, block_size i32  (once)
//             or failed = kFailed, group_aborted u8, message                        (once, at the end)
//   0 -> node k: step   = kStep, the encoded StepPlan                               (every step)
//             or stop   = kStop                                                     (at the end)
enum : uint8_t { kReady = 1, kFailed = 2, kStep = 3, kStop = 4 };

// How long node 0 waits, after its own ranks saw the group abort, for the other nodes to say
// why. A node that failed reports at once (its ranks abort the group as they fail, and it
// sends the error as soon as they have all returned); a dead one is a closed connection at
// once; so this bounds only a node that hangs.
constexpr std::chrono::seconds kReportWait{10};

std::string node_name(int32_t node, int32_t per_node) {
  const int32_t first = node * per_node;
  return per_node == 1 ? cat("node ", node, " (rank ", first, ")")
                       : cat("node ", node, " (ranks ", first, "..", first + per_node - 1, ")");
}

std::vector<uint8_t> failed_message(bool group_aborted, const std::string& message) {
  std::vector<uint8_t> out;
  WireWriter w(out);
  w.put(uint8_t(kFailed));
  w.put(uint8_t(group_aborted));
  w.put_string(message);
  return out;
}

// Best effort: node 0 may be gone already.
void report_failure(Socket& to_node_zero, bool group_aborted, const std::string& message) {
  try {
    to_node_zero.send_frame(failed_message(group_aborted, message));
  } catch (const NetworkError&) {
  }
}

}  // namespace

NodeRanks join_node_group(const NodeGroupOptions& options, const MakeGroupId& make_group_id,
                          const MakeNodeRanks& make_ranks) {
  const RendezvousOptions& rv = options.rendezvous;
  const int32_t size = options.tensor_parallel_size;
  if (rv.nnodes < 1 || size < rv.nnodes || size % rv.nnodes != 0)
    throw InvalidArgument(cat("tensor parallel size ", size, " does not split evenly over ", rv.nnodes, " nodes"));
  if (rv.node_rank < 0 || rv.node_rank >= rv.nnodes)
    throw InvalidArgument(cat("node rank ", rv.node_rank, " outside [0, ", rv.nnodes, ")"));
  const int32_t per_node = size / rv.nnodes;
  const int32_t first_rank = rv.node_rank * per_node;
  Fingerprint fingerprint = options.fingerprint;
  fingerprint.push_back({"--tensor-parallel-size", std::to_string(size)});
  fingerprint.push_back({"--nnodes", std::to_string(rv.nnodes)});
  fingerprint.push_back({"step plan encoding", std::to_string(int(kStepPlanCodecVersion))});

  NodeRanks node;
  if (rv.node_rank == 0) {
    RendezvousServer server(rv);
    if (options.on_listening) options.on_listening(server.address());
    const std::vector<uint8_t> group_id = make_group_id();
    node.links = server.wait_for_nodes(fingerprint, group_id);
    node.ranks = make_ranks(node.links.blob(), first_rank, per_node);
    node.num_kv_blocks = node.ranks->num_kv_blocks();
    const auto deadline = SteadyClock::now() + rv.timeout;
    std::vector<uint8_t> frame;
    for (int32_t k = 1; k < rv.nnodes; ++k) {
      const std::string name = node_name(k, per_node);
      if (!node.links.link(k).recv_frame(frame, deadline, cat(name, "'s start-up report")))
        throw Error(cat(name, " closed its connection while starting: it failed or was killed (see its log)"));
      WireReader r(frame, cat(name, "'s start-up report"));
      const uint8_t kind = r.get<uint8_t>();
      if (kind == kFailed) {
        r.get<uint8_t>();
        throw Error(cat(name, " failed to start: ", r.get_string()));
      }
      if (kind != kReady) throw Error(cat(name, " sent an unexpected message (", int(kind), ") while starting"));
      const int32_t num_kv_blocks = r.get<int32_t>();
      const int64_t vocab_size = r.get<int64_t>();
      const int32_t block_size = r.get<int32_t>();
      r.expect_end();
      if (vocab_size != node.ranks->vocab_size() || block_size != node.ranks->block_size())
        throw Error(cat(name, " runs vocab_size ", vocab_size, " and block_size ", block_size, ", node 0 ",
                        node.ranks->vocab_size(), " and ", node.ranks->block_size()));
      node.num_kv_blocks = std::min(node.num_kv_blocks, num_kv_blocks);
    }
    return node;
  }

  node.links = join_rendezvous(rv, fingerprint);
  Socket& to_node_zero = node.links.link(0);
  try {
    node.ranks = make_ranks(node.links.blob(), first_rank, per_node);
  } catch (const std::exception& e) {
    report_failure(to_node_zero, /*group_aborted=*/false, e.what());
    throw;
  }
  node.num_kv_blocks = node.ranks->num_kv_blocks();
  std::vector<uint8_t> ready;
  WireWriter w(ready);
  w.put(uint8_t(kReady));
  w.put(node.num_kv_blocks);
  w.put(node.ranks->vocab_size());
  w.put(node.ranks->block_size());
  to_node_zero.send_frame(ready);
  return node;
}

MultiNodeBackend::MultiNodeBackend(NodeRanks node) : node_(std::move(node)) {
  XY_CHECK(node_.links.node_rank() == 0 && node_.ranks, "the multi-node backend runs on node 0");
}

MultiNodeBackend::~MultiNodeBackend() {
  if (failed_) return;
  const std::vector<uint8_t> stop = {kStop};
  for (int32_t k = 1; k < node_.links.nnodes(); ++k) {
    try {
      node_.links.link(k).send_frame(stop);
    } catch (const NetworkError&) {
    }
  }
}

void MultiNodeBackend::forward(const meta::StepPlan& plan, std::vector<float>& logits) {
  run_step(plan, [&] { node_.ranks->forward(plan, logits); });
}

void MultiNodeBackend::forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan& sampling,
                                          meta::SamplingOutput& out) {
  run_step(plan, [&] { node_.ranks->forward_and_sample(plan, sampling, out); });
}

template <class RunLocal>
void MultiNodeBackend::run_step(const meta::StepPlan& plan, RunLocal&& run_local) {
  if (failed_) throw GroupAborted("the multi-node tensor-parallel group failed in an earlier step");
  try {
    send_plan(plan);
    run_local();
  } catch (...) {
    failed_ = true;
    node_.ranks->abort();
    rethrow_group_error(std::current_exception());
  }
}

void MultiNodeBackend::send_plan(const meta::StepPlan& plan) {
  frame_.clear();
  frame_.push_back(kStep);
  encode_step_plan(plan, frame_);
  const int32_t per_node = node_.ranks->num_local_ranks();
  for (int32_t k = 1; k < node_.links.nnodes(); ++k) {
    try {
      node_.links.link(k).send_frame(frame_);
    } catch (const NetworkError& e) {
      throw Error(cat(node_name(k, per_node), " is gone (", e.what(), "): it failed or was killed (see its log)"));
    }
  }
}

void MultiNodeBackend::rethrow_group_error(std::exception_ptr local_error) {
  try {
    std::rethrow_exception(local_error);
  } catch (const GroupAborted&) {
    // Some other rank failed: find out which below.
  } catch (...) {
    throw;  // node 0's own error (or a node found gone while sending it the plan)
  }
  const int32_t per_node = node_.ranks->num_local_ranks();
  const auto deadline = SteadyClock::now() + std::min<std::chrono::milliseconds>(node_.links.timeout(), kReportWait);
  std::string failure, closed;
  std::vector<uint8_t> frame;
  for (int32_t k = 1; k < node_.links.nnodes() && failure.empty(); ++k) {
    const std::string name = node_name(k, per_node);
    try {
      // Step messages are one-way, so the first frame from a node after the start is its report.
      if (!node_.links.link(k).recv_frame(frame, deadline, cat(name, "'s error report"))) {
        if (closed.empty()) closed = cat(name, " closed its connection mid-step: it exited or was killed (see its log)");
        continue;
      }
      WireReader r(frame, cat(name, "'s error report"));
      if (r.get<uint8_t>() != kFailed) continue;
      const bool group_aborted = r.get<uint8_t>() != 0;
      if (!group_aborted) failure = cat(name, " failed: ", r.get_string());
    } catch (const NetworkTimeout&) {
    } catch (const NetworkError&) {
      // A reset: it closed with our plan unread, the same story as a plain close.
      if (closed.empty()) closed = cat(name, " closed its connection mid-step: it exited or was killed (see its log)");
    } catch (const Error&) {
      // A malformed report: keep looking.
    }
  }
  if (!failure.empty()) throw Error(failure);
  if (!closed.empty()) throw Error(closed);
  std::rethrow_exception(local_error);
}

void follow_node_zero(NodeRanks& node) {
  XY_CHECK(node.links.node_rank() > 0 && node.ranks, "following node 0 from node ", node.links.node_rank());
  Socket& link = node.links.link(0);
  std::vector<uint8_t> frame;
  meta::StepPlan plan;
  for (;;) {
    if (!link.recv_frame(frame, kNoDeadline, "the next step from node 0"))
      throw Error(cat("node ", node.links.node_rank(), ": node 0 (", link.peer(),
                      ") closed the connection without stopping the group: it failed or was killed (see its log)"));
    if (!frame.empty() && frame[0] == kStop) return;
    try {
      if (frame.empty() || frame[0] != kStep)
        throw Error(cat("node 0 sent an unexpected message (", frame.empty() ? -1 : int(frame[0]), ")"));
      decode_step_plan(std::span<const uint8_t>(frame).subspan(1), plan);
      node.ranks->follow(plan);
    } catch (const GroupAborted& e) {
      report_failure(link, /*group_aborted=*/true, e.what());
      throw;
    } catch (const std::exception& e) {
      report_failure(link, /*group_aborted=*/false, e.what());
      throw;
    }
  }
}

}  // namespace xy::parallel
