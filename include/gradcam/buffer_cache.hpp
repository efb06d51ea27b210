// Large tensor buffers are kept for reuse when freed instead of going back to the C library.
// A forward pass frees all its activations when it ends; glibc then hands the top of its heap
// back to the system, and the next pass faults those pages in again, each one zeroed by the
// kernel: 3,700 faults (15 MB) per ResNet-50 forward, a tenth of its time. A network asks
// for the same sizes on every pass, so blocks kept by exact size serve the next pass.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace gradcam {

namespace detail {

class BufferCache {
  public:
    // Blocks below this size are left to malloc, which serves them from its arenas anyway.
    static constexpr std::size_t min_cached_bytes = std::size_t(1) << 18;
    static constexpr std::size_t alignment = 64, page = 4096;

    // Never destroyed: a tensor with static storage duration may be freed after every static
    // object is gone.
    static BufferCache& instance() {
        static BufferCache* cache = new BufferCache;
        return *cache;
    }

    // The size a request of `bytes` is served with (and must be released with).
    static std::size_t rounded(std::size_t bytes) {
        const std::size_t unit = bytes >= min_cached_bytes ? page : alignment;
        if (bytes > std::numeric_limits<std::size_t>::max() - unit) throw std::bad_alloc();
        return (bytes + unit - 1) / unit * unit;
    }

    void* acquire(std::size_t bytes) {
        if (bytes >= min_cached_bytes) {
            std::lock_guard lock(mutex_);
            auto it = free_.find(bytes);
            if (it != free_.end() && !it->second.empty()) {
                void* p = it->second.back();
                it->second.pop_back();
                cached_ -= bytes;
                return p;
            }
        }
        void* p = std::aligned_alloc(alignment, bytes);
        if (!p) {
            release_all();  // a last resort before giving up: the cache may hold what is needed
            p = std::aligned_alloc(alignment, bytes);
            if (!p) throw std::bad_alloc();
        }
        return p;
    }

    // Keeps the block, making room by freeing blocks of other sizes if need be (a size that
    // is being freed is likely to be asked for again; stale sizes, after the input size
    // changed, are not). Called from destructors: never throws.
    void release(void* p, std::size_t bytes) noexcept {
        if (bytes >= min_cached_bytes) {
            try {
                std::lock_guard lock(mutex_);
                if (bytes <= limit_) {
                    trim_locked(limit_ - bytes);
                    free_[bytes].push_back(p);
                    cached_ += bytes;
                    return;
                }
            } catch (...) {  // no memory for the bookkeeping, or the lock failed: just free
            }
        }
        std::free(p);
    }

    std::size_t limit() {
        std::lock_guard lock(mutex_);
        return limit_;
    }
    std::size_t size() {
        std::lock_guard lock(mutex_);
        return cached_;
    }
    void set_limit(std::size_t bytes) {
        std::lock_guard lock(mutex_);
        limit_ = bytes;
        trim_locked(limit_);
    }
    void release_all() {
        std::lock_guard lock(mutex_);
        trim_locked(0);
    }

  private:
    BufferCache() = default;

    // Frees kept blocks until at most `target` bytes are kept.
    void trim_locked(std::size_t target) {
        for (auto it = free_.begin(); it != free_.end() && cached_ > target;) {
            while (!it->second.empty() && cached_ > target) {
                std::free(it->second.back());
                it->second.pop_back();
                cached_ -= it->first;
            }
            it = it->second.empty() ? free_.erase(it) : std::next(it);
        }
    }

    std::mutex mutex_;
    std::unordered_map<std::size_t, std::vector<void*>> free_;  // by exact (rounded) size
    std::size_t cached_ = 0;
#if defined(__SANITIZE_ADDRESS__)
    std::size_t limit_ = 0;  // reused blocks would hide use-after-free from AddressSanitizer
#else
    std::size_t limit_ = std::size_t(256) << 20;
#endif
};

}  // namespace detail

// Bytes of freed tensor buffers kept for reuse (at most buffer_cache_limit()).
inline std::size_t buffer_cache_size() { return detail::BufferCache::instance().size(); }

// At most this many bytes are kept (256 MiB unless set; 0 under AddressSanitizer); 0 turns
// the cache off. Lowering the limit frees what is over it at once. When a freed block does not
// fit, blocks of other sizes are given back to make room.
inline std::size_t buffer_cache_limit() { return detail::BufferCache::instance().limit(); }
inline void set_buffer_cache_limit(std::size_t bytes) {
    detail::BufferCache::instance().set_limit(bytes);
}

// Give every kept buffer back to the C library (after the last explanation of a batch job,
// say); the cache fills again with use.
inline void release_buffer_cache() { detail::BufferCache::instance().release_all(); }

}  // namespace gradcam
