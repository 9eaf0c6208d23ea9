#include "xyserve/parallel/nccl/nccl_communicator.h"

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "xyserve/common/check.h"

namespace xy::parallel {
namespace {

[[noreturn]] void throw_nccl_error(ncclResult_t result, ncclComm_t comm, const char* file, int line,
                                   const char* expr) {
  const char* last = ncclGetLastError(comm);
  throw NcclError(cat(file, ":", line, ": ", expr, ": ", ncclGetErrorString(result),
                      last && *last ? cat(" (", last, ")") : std::string()));
}

#define XY_NCCL_CHECK(comm, expr)                                                         \
  do {                                                                                    \
    const ncclResult_t xy_nccl_result_ = (expr);                                          \
    if (xy_nccl_result_ != ncclSuccess)                                                   \
      throw_nccl_error(xy_nccl_result_, (comm), __FILE__, __LINE__, #expr);               \
  } while (0)

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::kF32: return ncclFloat32;
    case DType::kBF16: return ncclBfloat16;
    case DType::kF16: return ncclFloat16;
  }
  XY_CHECK(false, "dtype ", int(dtype));
  return ncclFloat32;
}

}  // namespace

ncclUniqueId NcclCommunicator::make_unique_id() {
  ncclUniqueId id;
  XY_NCCL_CHECK(nullptr, ncclGetUniqueId(&id));
  return id;
}

NcclCommunicator::NcclCommunicator(const ncclUniqueId& id, int32_t rank, int32_t size)
    : rank_(rank), size_(size) {
  XY_CHECK(size >= 1 && rank >= 0 && rank < size, "rank ", rank, " of ", size);
  XY_NCCL_CHECK(nullptr, ncclCommInitRank(&comm_, size, id, rank));
}

NcclCommunicator::NcclCommunicator(ncclComm_t comm) : comm_(comm) {
  int rank = 0, size = 0;
  XY_NCCL_CHECK(comm_, ncclCommUserRank(comm_, &rank));
  XY_NCCL_CHECK(comm_, ncclCommCount(comm_, &size));
  rank_ = rank;
  size_ = size;
}

NcclCommunicator::~NcclCommunicator() {
  // An aborted communicator is already freed; a healthy one waits for its queued work.
  if (comm_ && !aborted_.load()) ncclCommDestroy(comm_);
}

int NcclCommunicator::device() const {
  int device = 0;
  XY_NCCL_CHECK(comm_, ncclCommCuDevice(comm_, &device));
  return device;
}

void NcclCommunicator::abort() {
  if (aborted_.exchange(true)) return;
  ncclCommAbort(comm_);
}

void NcclCommunicator::check_usable() const {
  if (aborted_.load()) throw GroupAborted("NCCL communicator aborted: a rank failed");
}

void NcclCommunicator::all_reduce_sum_impl(void* data, int64_t count, DType dtype) {
  check_usable();
  XY_NCCL_CHECK(comm_, ncclAllReduce(data, data, size_t(count), nccl_type(dtype), ncclSum, comm_, stream_));
}

void NcclCommunicator::all_gather_impl(const void* send, void* recv, int64_t count, DType dtype) {
  check_usable();
  XY_NCCL_CHECK(comm_, ncclAllGather(send, recv, size_t(count), nccl_type(dtype), comm_, stream_));
}

std::vector<std::unique_ptr<Communicator>> make_nccl_group(const std::vector<int>& devices) {
  XY_CHECK(!devices.empty(), "no devices");
  std::vector<ncclComm_t> comms(devices.size());
  XY_NCCL_CHECK(nullptr, ncclCommInitAll(comms.data(), int(devices.size()), devices.data()));
  std::vector<std::unique_ptr<Communicator>> ranks;
  for (ncclComm_t c : comms) ranks.push_back(std::make_unique<NcclCommunicator>(c));
  return ranks;
}

namespace {

// This process's ranks of group `id`, blocking: ncclCommInitRank for each, in one NCCL group
// call, each with its device current (NCCL requires both when one thread joins several ranks).
std::vector<ncclComm_t> init_ranks(const ncclUniqueId& id, int32_t first_rank, int32_t size,
                                   const std::vector<int>& devices) {
  std::vector<ncclComm_t> comms(devices.size());
  XY_NCCL_CHECK(nullptr, ncclGroupStart());
  for (size_t i = 0; i < devices.size(); ++i) {
    const cudaError_t err = cudaSetDevice(devices[i]);
    if (err != cudaSuccess) {
      ncclGroupEnd();
      throw NcclError(cat("cudaSetDevice(", devices[i], ") for rank ", first_rank + int32_t(i), ": ",
                          cudaGetErrorString(err)));
    }
    XY_NCCL_CHECK(nullptr, ncclCommInitRank(&comms[i], size, id, first_rank + int32_t(i)));
  }
  XY_NCCL_CHECK(nullptr, ncclGroupEnd());
  return comms;
}

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_nccl_group(const ncclUniqueId& id, int32_t first_rank, int32_t size,
                                                           const std::vector<int>& devices,
                                                           std::chrono::milliseconds timeout) {
  XY_CHECK(!devices.empty() && first_rank >= 0 && first_rank + int32_t(devices.size()) <= size, "ranks [",
           first_rank, ", +", devices.size(), ") of ", size);
  XY_CHECK(timeout.count() > 0, "timeout ", timeout.count(), " ms");
  // The set-up's state is shared with its thread, which may outlive this call (timeout).
  struct Setup {
    std::mutex mutex;
    std::condition_variable finished;
    bool done = false;
    std::vector<ncclComm_t> comms;
    std::exception_ptr error;
  };
  auto setup = std::make_shared<Setup>();
  std::thread([setup, id, first_rank, size, devices] {
    std::vector<ncclComm_t> comms;
    std::exception_ptr error;
    try {
      comms = init_ranks(id, first_rank, size, devices);
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard lock(setup->mutex);
    setup->comms = std::move(comms);
    setup->error = error;
    setup->done = true;
    setup->finished.notify_all();
  }).detach();
  std::unique_lock lock(setup->mutex);
  if (!setup->finished.wait_for(lock, timeout, [&] { return setup->done; }))
    throw NcclTimeout(cat("tensor parallel: NCCL ranks ", first_rank, "..", first_rank + int32_t(devices.size()) - 1,
                          " of ", size, " not joined after ", double(timeout.count()) / 1000.0,
                          " s (--dist-timeout): a peer did not join NCCL's set-up, or NCCL cannot reach it"));
  if (setup->error) std::rethrow_exception(setup->error);
  std::vector<std::unique_ptr<Communicator>> ranks;
  for (ncclComm_t c : setup->comms) ranks.push_back(std::make_unique<NcclCommunicator>(c));
  return ranks;
}

}  // namespace xy::parallel
