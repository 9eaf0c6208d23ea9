// RAII owners of device and pinned host memory (STYLE.md habit 7): no raw cudaMalloc outlives
// its owner, and a failed allocation throws CudaError naming what was asked for.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "xyserve/backend/cuda/cuda_check.h"

namespace xy::cuda {

// `count` elements of T in device memory, uninitialised. Move-only.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) { reset(count); }
  DeviceBuffer(DeviceBuffer&& other) noexcept { swap(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    swap(other);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  // Frees the old memory and allocates `count` elements (0: none).
  void reset(size_t count) {
    release();
    if (count == 0) return;
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, count * sizeof(T));
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      throw CudaError(cat("cudaMalloc of ", count * sizeof(T), " bytes failed: ",
                          cudaGetErrorString(err)));
    }
    ptr_ = static_cast<T*>(p);
    count_ = count;
  }
  // Grows to at least `count` elements; contents are lost when it grows.
  void reserve(size_t count) {
    if (count > count_) reset(count);
  }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

 private:
  void release() noexcept {
    if (ptr_) (void)cudaFree(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  void swap(DeviceBuffer& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(count_, other.count_);
  }
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// `count` elements of T in page-locked host memory (the source of one async upload per step).
template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&&) = delete;
  PinnedBuffer(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { release(); }

  void reserve(size_t count) {
    if (count <= count_) return;
    release();
    void* p = nullptr;
    XY_CUDA_CHECK(cudaMallocHost(&p, count * sizeof(T)));
    ptr_ = static_cast<T*>(p);
    count_ = count;
  }
  T* get() const { return ptr_; }
  size_t size() const { return count_; }

 private:
  void release() noexcept {
    if (ptr_) (void)cudaFreeHost(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// A CUDA stream and an event, owned.
class Stream {
 public:
  Stream() { XY_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() { (void)cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class Event {
 public:
  explicit Event(unsigned flags = cudaEventDisableTiming) {
    XY_CUDA_CHECK(cudaEventCreateWithFlags(&event_, flags));
  }
  ~Event() { (void)cudaEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace xy::cuda
