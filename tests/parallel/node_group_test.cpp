// Tensor parallelism over nodes, the nodes as threads of this process joined over loopback
// exactly as processes are (rendezvous, TCP communicator, plans on the wire): node 0's backend
// gives bitwise the logits and greedy tokens of the one-process group of the same size (the TCP
// group sums in the same rank order); an error on another node reaches node 0 naming that node
// and carrying its message; a node that fails to start is reported by node 0; node 0's stop
// ends the other nodes cleanly, and node 0 gone ends them with an error.
#include <gtest/gtest.h>

#include <future>

#include "engine/tiny_model.h"
#include "parallel/tp_test_models.h"
#include "xyserve/backend/cpu/cpu_tensor_parallel.h"
#include "xyserve/parallel/node_group.h"
#include "xyserve/parallel/tcp_communicator.h"
#include "xyserve/parallel/wire_format.h"

namespace xy::parallel {
namespace {

using namespace std::chrono_literals;
using backend::cpu::CpuBackendOptions;
using testing::kTpVocab;
using testing::TpModel;
using testing::tp_weights;

constexpr int32_t kBlocks = 64;
constexpr int32_t kBlockSize = 16;

CpuBackendOptions cpu_options(int32_t threads) {
  CpuBackendOptions o;
  o.num_kv_blocks = kBlocks;
  o.block_size = kBlockSize;
  o.num_threads = threads;
  return o;
}

NodeGroupOptions group_options(int32_t size, int32_t nnodes, int32_t node_rank, uint16_t port) {
  NodeGroupOptions o;
  o.rendezvous.master_addr = "127.0.0.1";
  o.rendezvous.master_port = port;
  o.rendezvous.nnodes = nnodes;
  o.rendezvous.node_rank = node_rank;
  o.rendezvous.timeout = 20s;
  o.tensor_parallel_size = size;
  o.fingerprint = {{"model", "test"}};
  return o;
}

// A free port for node 0's rendezvous: node 0 must be told its port before it starts, here,
// because the other nodes are started first (each waits for node 0, retrying).
uint16_t free_port() {
  Listener l("127.0.0.1", 0, 1);
  return l.port();
}

// The TCP group of ranks [first, first + num), given the hub (node 0) or its port (the others).
std::vector<std::unique_ptr<Communicator>> tcp_ranks(std::span<const uint8_t> id, int32_t size, int32_t first,
                                                     int32_t num, std::unique_ptr<TcpGroupHub> hub) {
  TcpGroupOptions o;
  o.hub_host = "127.0.0.1";
  o.hub_port = WireReader(id, "group id").get<uint16_t>();
  o.size = size;
  o.first_rank = first;
  o.num_ranks = num;
  o.timeout = 20s;
  return make_tcp_group(o, std::move(hub));
}

// Node 0 and nodes 1..nnodes-1 (on threads), joined over a TCP group, each node's ranks made by
// make(its communicators). Node 0's NodeRanks are returned; each other node runs
// follow_node_zero, its outcome ("" or its error) in `others`.
struct Group {
  std::vector<std::future<std::string>> others;  // declared first: destroyed after node 0 stops or goes
  NodeRanks zero;
};
using RankMaker = std::function<std::unique_ptr<TensorParallelBackend>(std::vector<std::unique_ptr<Communicator>>)>;

Group start_group(int32_t size, int32_t nnodes, const RankMaker& make) {
  const uint16_t port = free_port();
  Group g;
  for (int32_t k = 1; k < nnodes; ++k) {
    g.others.push_back(std::async(std::launch::async, [=]() -> std::string {
      try {
        NodeRanks node = join_node_group(group_options(size, nnodes, k, port), {},
                                         [&](std::span<const uint8_t> id, int32_t first, int32_t num) {
                                           return make(tcp_ranks(id, size, first, num, nullptr));
                                         });
        follow_node_zero(node);
        return "";
      } catch (const std::exception& e) {
        return e.what();
      }
    }));
  }
  std::unique_ptr<TcpGroupHub> hub;
  g.zero = join_node_group(
      group_options(size, nnodes, 0, port),
      [&] {
        hub = std::make_unique<TcpGroupHub>("127.0.0.1", size);
        std::vector<uint8_t> id;
        WireWriter(id).put(hub->port());
        return id;
      },
      [&](std::span<const uint8_t> id, int32_t first, int32_t num) {
        return make(tcp_ranks(id, size, first, num, std::move(hub)));
      });
  return g;
}

// CPU ranks of model `m` over nodes, through the production entry point: every node runs
// join_tensor_parallel_cpu_nodes, node 0's becomes the MultiNodeBackend.
struct CpuNodes {
  std::vector<std::future<std::string>> others;  // declared first: destroyed after node 0 stops
  std::unique_ptr<MultiNodeBackend> zero;
};

CpuNodes cpu_nodes(const TpModel& m, int32_t size, int32_t nnodes) {
  tp_weights(m);  // written here, once: the cache is not thread-safe
  const uint16_t port = free_port();
  CpuNodes g;
  for (int32_t k = 1; k < nnodes; ++k) {
    g.others.push_back(std::async(std::launch::async, [=]() -> std::string {
      try {
        NodeRanks node = backend::cpu::join_tensor_parallel_cpu_nodes(tp_weights(m), cpu_options(size / nnodes),
                                                                      group_options(size, nnodes, k, port));
        follow_node_zero(node);
        return "";
      } catch (const std::exception& e) {
        return e.what();
      }
    }));
  }
  g.zero = std::make_unique<MultiNodeBackend>(backend::cpu::join_tensor_parallel_cpu_nodes(
      tp_weights(m), cpu_options(size / nnodes), group_options(size, nnodes, 0, port)));
  return g;
}

TEST(NodeGroupTest, LogitsAcrossNodesAreBitwiseThoseOfOneProcess) {
  for (const auto& [m, size, nnodes] : {std::tuple{TpModel{"llama", 4, 2}, 2, 2}, std::tuple{TpModel{"qwen3", 4, 2}, 4, 2},
                                        std::tuple{TpModel{"llama", 4, 1}, 4, 4}}) {
    auto one_process = backend::cpu::make_tensor_parallel_cpu_backend(tp_weights(m), cpu_options(size), size);
    CpuNodes nodes = cpu_nodes(m, size, nnodes);
    EXPECT_EQ(nodes.zero->vocab_size(), kTpVocab);
    EXPECT_EQ(nodes.zero->num_kv_blocks(), kBlocks);
    std::vector<float> want, got;
    for (const meta::StepPlan& plan : testing::tp_test_steps(uint64_t(size * 10 + nnodes), kBlocks, kBlockSize, 10)) {
      one_process->forward(plan, want);
      nodes.zero->forward(plan, got);
      ASSERT_EQ(got, want) << m.name() << " size " << size << " over " << nnodes << " nodes";
    }
    nodes.zero.reset();  // stop
    for (auto& other : nodes.others) EXPECT_EQ(other.get(), "") << "a node did not stop cleanly";
  }
}

TEST(NodeGroupTest, GreedyTokensAcrossNodesAreThoseOfOneProcess) {
  const TpModel m{"llama", 4, 2};
  const auto prompts = testing::random_prompts(4, 1, 40, /*seed=*/3, kTpVocab);
  engine::EngineConfig config;
  config.speculative_method = engine::SpeculativeMethod::kNgram;  // draft trees move KV slots on every rank
  config.scheduler.num_speculative_tokens = 3;
  config.ngram.tree = true;
  auto one_process = backend::cpu::make_tensor_parallel_cpu_backend(tp_weights(m), cpu_options(2), 2);
  CpuNodes nodes = cpu_nodes(m, 2, 2);
  engine::Engine want_engine(*one_process, nullptr, config);
  engine::Engine got_engine(*nodes.zero, nullptr, config);
  const auto want = testing::outputs_of(want_engine.generate_batch(prompts, testing::greedy_options(20)));
  const auto got = testing::outputs_of(got_engine.generate_batch(prompts, testing::greedy_options(20)));
  EXPECT_EQ(got, want);
}

// A rank that fails its `fail_at`-th step (after meeting the others once in it) on rank
// `failing`; the others wait in a second collective. Rank r has 10 - r KV blocks.
class FailingRank : public backend::Backend {
 public:
  FailingRank(Communicator& comm, int32_t failing, int fail_at) : comm_(comm), failing_(failing), fail_at_(fail_at) {}
  void forward(const meta::StepPlan&, std::vector<float>& logits) override {
    float x = 1.0f;
    comm_.all_reduce_sum(&x, 1);
    if (comm_.rank() == failing_ && ++steps_ == fail_at_) throw ModelError(cat("rank ", failing_, " ran out of luck"));
    comm_.all_reduce_sum(&x, 1);
    logits.assign(1, x);
  }
  void forward_and_sample(const meta::StepPlan& plan, const meta::SamplingPlan&, meta::SamplingOutput&) override {
    std::vector<float> logits;
    forward(plan, logits);
  }
  int64_t vocab_size() const override { return 1; }
  int32_t num_kv_blocks() const override { return 10 - comm_.rank(); }
  int32_t block_size() const override { return 16; }

 private:
  Communicator& comm_;
  int32_t failing_;
  int fail_at_;
  int steps_ = 0;
};

RankMaker failing_ranks(int32_t failing, int fail_at) {
  const model::ModelWeights* weights = &tp_weights({"llama", 4, 2});  // here: the cache is not thread-safe
  return [=](std::vector<std::unique_ptr<Communicator>> comms) {
    return std::make_unique<TensorParallelBackend>(
        *weights, std::move(comms),
        [=](const ShardedWeights&, Communicator& comm) { return std::make_unique<FailingRank>(comm, failing, fail_at); });
  };
}

TEST(NodeGroupTest, AnErrorOnAnotherNodeReachesNodeZeroNamingTheNodeAndItsMessage) {
  // 4 ranks over 2 nodes: rank 3 (node 1) fails in the third step.
  Group g = start_group(4, 2, failing_ranks(/*failing=*/3, /*fail_at=*/3));
  EXPECT_EQ(g.zero.num_kv_blocks, 7) << "the least over every rank of every node (rank 3's)";
  MultiNodeBackend backend(std::move(g.zero));
  std::vector<float> logits;
  backend.forward(meta::StepPlan{}, logits);
  backend.forward(meta::StepPlan{}, logits);
  EXPECT_EQ(logits, std::vector<float>{16.0f}) << "(1 + 1 + 1 + 1) summed again over the 4 ranks";
  try {
    backend.forward(meta::StepPlan{}, logits);
    ADD_FAILURE() << "no error";
  } catch (const GroupAborted& e) {
    ADD_FAILURE() << "node 1's error was lost: " << e.what();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "node 1 (ranks 2..3) failed: rank 3 ran out of luck");
  }
  EXPECT_THROW(backend.forward(meta::StepPlan{}, logits), GroupAborted) << "later steps fail at once";
  EXPECT_EQ(g.others[0].get(), "rank 3 ran out of luck");
}

TEST(NodeGroupTest, AnErrorOnNodeZeroEndsTheOtherNodes) {
  Group g = start_group(2, 2, failing_ranks(/*failing=*/0, /*fail_at=*/2));
  MultiNodeBackend backend(std::move(g.zero));
  std::vector<float> logits;
  backend.forward(meta::StepPlan{}, logits);
  try {
    backend.forward(meta::StepPlan{}, logits);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "rank 0 ran out of luck");
  }
  const std::string other = g.others[0].get();
  EXPECT_NE(other.find("group aborted"), std::string::npos) << other;
}

TEST(NodeGroupTest, NodeZeroReportsANodeThatFailedToStartWithItsError) {
  const uint16_t port = free_port();
  auto other = std::async(std::launch::async, [&]() -> std::string {
    try {
      join_node_group(group_options(2, 2, 1, port), {},
                      [&](std::span<const uint8_t>, int32_t, int32_t) -> std::unique_ptr<TensorParallelBackend> {
                        throw ModelError("model.safetensors: tensor 'lm_head.weight' is missing");
                      });
      return "";
    } catch (const std::exception& e) {
      return e.what();
    }
  });
  try {
    // Node 0's rank alone in a group of one: node 1 never builds its half.
    join_node_group(
        group_options(2, 2, 0, port), [] { return std::vector<uint8_t>{0, 0}; },
        [&](std::span<const uint8_t> id, int32_t, int32_t) {
          return failing_ranks(-1, 0)(tcp_ranks(id, 1, 0, 1, std::make_unique<TcpGroupHub>("127.0.0.1", 1)));
        });
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "node 1 (rank 1) failed to start: model.safetensors: tensor 'lm_head.weight' is missing");
  }
  EXPECT_EQ(other.get(), "model.safetensors: tensor 'lm_head.weight' is missing");
}

TEST(NodeGroupTest, NodeZerosStopEndsTheOtherNodesCleanly) {
  Group g = start_group(4, 4, failing_ranks(/*failing=*/-1, 0));
  {
    MultiNodeBackend backend(std::move(g.zero));
    std::vector<float> logits;
    backend.forward(meta::StepPlan{}, logits);
  }
  for (auto& other : g.others) EXPECT_EQ(other.get(), "");
}

TEST(NodeGroupTest, NodeZeroGoneEndsTheOtherNodesWithAnError) {
  Group g = start_group(2, 2, failing_ranks(/*failing=*/-1, 0));
  g.zero.ranks.reset();  // as if node 0 died: no stop, its connections close
  g.zero.links = NodeLinks();
  const std::string e = g.others[0].get();
  EXPECT_NE(e.find("node 0"), std::string::npos) << e;
  EXPECT_NE(e.find("without stopping the group"), std::string::npos) << e;
}

}  // namespace
}  // namespace xy::parallel
