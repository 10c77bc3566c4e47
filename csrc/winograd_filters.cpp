// The cache behind winograd_filter (see winograd_filters.h).
//
// Correctness first: an entry matches only a weight with the same shape, dtype, direction and
// bytes (compared in full with memcmp against a private copy), so an in-place change to a weight
// (also through .data, which a version counter would not see) can never return a stale transform.
// The comparison reads the weight once (~30 us for 128x128x3x3 floats); the transform writes four
// times as much and costs ~10x more.
#include "winograd_filters.h"

#include <cstring>
#include <list>
#include <mutex>

#include "kernels.h"

namespace pulse_ext {
namespace {

// Filters larger than this (beyond 256 x 256 channels in fp32, which PULSE_EXT_CPU_CONV=auto sends to
// oneDNN) are transformed per call; the cache holds at most kCacheBytes (least recently used first out).
constexpr int64_t kMaxEntryBytes = int64_t(16) << 20;
constexpr int64_t kCacheBytes = int64_t(256) << 20;

at::Tensor transform(const at::Tensor& w, bool adjoint) {
  const int64_t cout = w.size(0), cin = w.size(1);
  at::Tensor u = at::empty({36, adjoint ? cout : cin, adjoint ? cin : cout}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "winograd_filter_transform", [&] {
    cpu::winograd_filter_transform<scalar_t>(w.const_data_ptr<scalar_t>(), cout, cin, adjoint, u.data_ptr<scalar_t>());
  });
  return u;
}

struct Entry {
  at::Tensor weight;  // a private contiguous copy of the weight it was made from
  bool adjoint;
  at::Tensor filter;
  int64_t bytes() const { return (weight.numel() + filter.numel()) * int64_t(weight.element_size()); }
};

class FilterCache {
 public:
  at::Tensor get(const at::Tensor& w, bool adjoint) {
    const int64_t entry_bytes = w.numel() * 5 * int64_t(w.element_size());  // copy + 4x for the 6x6 points
    if (entry_bytes > kMaxEntryBytes) return transform(w, adjoint);
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->adjoint != adjoint || it->weight.sizes() != w.sizes() || it->weight.scalar_type() != w.scalar_type())
        continue;
      if (std::memcmp(it->weight.const_data_ptr(), w.const_data_ptr(), w.nbytes()) != 0) continue;
      entries_.splice(entries_.begin(), entries_, it);  // most recently used first
      return entries_.front().filter;
    }
    Entry entry{w.clone(), adjoint, transform(w, adjoint)};
    bytes_ += entry.bytes();
    entries_.push_front(std::move(entry));
    while (bytes_ > kCacheBytes && entries_.size() > 1) {
      bytes_ -= entries_.back().bytes();
      entries_.pop_back();
    }
    return entries_.front().filter;
  }

 private:
  std::mutex mutex_;
  std::list<Entry> entries_;
  int64_t bytes_ = 0;
};

FilterCache& cache() {
  static FilterCache instance;
  return instance;
}

}  // namespace

at::Tensor winograd_filter(const at::Tensor& weight, bool adjoint) {
  return cache().get(weight.contiguous(), adjoint);
}

}  // namespace pulse_ext
