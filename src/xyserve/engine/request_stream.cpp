#include "xyserve/engine/request_stream.h"

#include "xyserve/common/check.h"

namespace xy::engine {

void RequestStream::push(StreamEvent event) {
  std::shared_ptr<const std::function<void()>> listener;
  {
    std::lock_guard<std::mutex> lock(mu_);
    XY_CHECK(!finish_pushed_, "request ", id_, ": event after the finishing one");
    finish_pushed_ = event.finished;
    events_.push_back(std::move(event));
    listener = listener_;
  }
  cv_.notify_all();
  if (listener) (*listener)();
}

void RequestStream::set_listener(std::function<void()> listener) {
  bool pending = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    XY_CHECK(!listener_, "request ", id_, ": listener set twice");
    listener_ = std::make_shared<const std::function<void()>>(std::move(listener));
    pending = !events_.empty();
    if (pending) listener = *listener_;
  }
  if (pending) listener();
}

StreamEvent RequestStream::pop_locked() {
  if (events_.empty()) {  // only after the finishing event was taken
    StreamEvent done;
    done.finished = true;
    return done;
  }
  StreamEvent e = std::move(events_.front());
  events_.pop_front();
  if (e.finished) finish_taken_ = true;
  return e;
}

StreamEvent RequestStream::next() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !events_.empty() || finish_taken_; });
  return pop_locked();
}

std::optional<StreamEvent> RequestStream::next_for(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty() || finish_taken_; }))
    return std::nullopt;
  return pop_locked();
}

std::optional<StreamEvent> RequestStream::try_next() {
  std::lock_guard<std::mutex> lock(mu_);
  if (events_.empty() && !finish_taken_) return std::nullopt;
  return pop_locked();
}

bool RequestStream::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finish_pushed_;
}

}  // namespace xy::engine
