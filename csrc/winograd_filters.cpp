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

// Filters larger than this (beyond 512 x 512 channels in fp32) are transformed per call; the cache
// holds at most kCacheBytes, least recently used first out: enough for config-f's ten 512 x 512
// entries (five layers, forward and data gradient, 47 MB each), whose transform per call had cost
// more than their convolution at R = 1.
constexpr int64_t kMaxEntryBytes = int64_t(64) << 20;
constexpr int64_t kCacheBytes = int64_t(512) << 20;

at::Tensor transform(const at::Tensor& w, bool adjoint) {
  const int64_t cout = w.size(0), cin = w.size(1);
  at::Tensor u = at::empty({36, adjoint ? cout : cin, adjoint ? cin : cout}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "winograd_filter_transform", [&] {
    cpu::winograd_filter_transform<scalar_t>(w.const_data_ptr<scalar_t>(), cout, cin, adjoint, u.data_ptr<scalar_t>());
  });
  return u;
}

struct Entry {
  const void* source;  // where the weight that last used it lives: changed in place, it replaces this entry
  at::Tensor weight;   // a private contiguous copy of the weight it was made from
  bool adjoint;
  at::Tensor filter;
  int64_t bytes() const { return (weight.numel() + filter.numel()) * int64_t(weight.element_size()); }
  bool matches(const at::Tensor& w, bool direction) const {
    return adjoint == direction && weight.sizes() == w.sizes() && weight.scalar_type() == w.scalar_type() &&
           std::memcmp(weight.const_data_ptr(), w.const_data_ptr(), w.nbytes()) == 0;
  }
};

class FilterCache {
 public:
  at::Tensor get(const at::Tensor& w, bool adjoint) {
    // The limit counts fp32 elements: fp64 filters of the same shapes are cached too.
    const int64_t entry_bytes = w.numel() * 5 * int64_t(sizeof(float));  // copy + 4x for the 6x6 points
    if (entry_bytes > kMaxEntryBytes) return transform(w, adjoint);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (!it->matches(w, adjoint)) continue;
        // The weight may live elsewhere than the one the entry was made from (equal contents, e.g. the
        // same model loaded twice): an in-place change of that weight must replace this entry too.
        it->source = w.const_data_ptr();
        entries_.splice(entries_.begin(), entries_, it);  // most recently used first
        return entries_.front().filter;
      }
    }
    // A miss: transform without holding the lock (other threads' lookups go on), then insert, replacing
    // the entry of a weight that lived at the same address (changed in place, e.g. while training), so
    // weights that change every step do not fill the cache with dead entries.
    Entry entry{w.const_data_ptr(), w.clone(), adjoint, transform(w, adjoint)};
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end();) {
      const bool same_weight = it->adjoint == adjoint && (it->source == entry.source || it->matches(w, adjoint));
      if (same_weight) {
        bytes_ -= it->bytes();
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
    bytes_ += entry.bytes();
    entries_.push_front(std::move(entry));
    while (bytes_ > kCacheBytes && entries_.size() > 1) {
      bytes_ -= entries_.back().bytes();
      entries_.pop_back();
    }
    return entries_.front().filter;
  }

  int64_t entries() {
    std::lock_guard<std::mutex> lock(mutex_);
    return int64_t(entries_.size());
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
  TORCH_CHECK(!weight.is_cuda() && weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3,
              "winograd_filter: weight must be a CPU tensor [Cout, Cin, 3, 3], got ", weight.sizes(), " on ",
              weight.device());
  return cache().get(weight.contiguous(), adjoint);
}

int64_t winograd_filter_cache_entries() { return cache().entries(); }

}  // namespace pulse_ext
