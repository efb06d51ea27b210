// Threads through OpenMP when the program is compiled with it (-fopenmp), one thread
// otherwise. Ops split independent work (images of a batch, channel planes) across threads;
// inside a single large product, detail::gemm (or Eigen's, for narrow ones) uses them itself.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <memory>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gradcam/shape.hpp"

namespace gradcam::detail {

// Translation units built with and without OpenMP get differently named copies, so a program
// mixing them cannot pair one's thread count with the other's loop.
#ifdef _OPENMP
inline namespace with_openmp {
#else
inline namespace without_openmp {
#endif

// Below this many values an elementwise or pooling op runs on one thread: the threads would
// cost more than they save.
inline constexpr index_t parallel_grain = index_t(1) << 15;

// The number of threads parallel_for(count, parallel, ...) runs on.
inline int parallel_threads(index_t count, bool parallel) {
#ifdef _OPENMP
    if (parallel && count > 1 && omp_get_max_threads() > 1 && !omp_in_parallel())
        return static_cast<int>(std::min<index_t>(count, omp_get_max_threads()));
#endif
    (void)count;
    (void)parallel;
    return 1;
}

// Calls body(i, thread) for i in [0, count), spread over parallel_threads(count, parallel)
// threads; `thread` is below that number. An exception thrown by the body is rethrown here,
// after the threads have stopped (letting it leave an OpenMP region would end the program).
template <class Body>
void parallel_for(index_t count, bool parallel, Body&& body) {
    const int threads = parallel_threads(count, parallel);
    if (threads == 1) {
        for (index_t i = 0; i < count; ++i) body(i, 0);
        return;
    }
#ifdef _OPENMP
    std::exception_ptr failure;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (index_t i = 0; i < count; ++i) {
        try {
            body(i, omp_get_thread_num());
        } catch (...) {
#pragma omp critical(gradcam_parallel_failure)
            if (!failure) failure = std::current_exception();
        }
    }
    if (failure) std::rethrow_exception(failure);
#endif
}

// Calls body(begin, count) on consecutive chunks of parallel_grain values (the last may be
// shorter) that cover [0, size), on several threads when there is more than one chunk: for
// elementwise ops.
template <class Body>
void parallel_chunks(index_t size, Body&& body) {
    const index_t chunks = (size + parallel_grain - 1) / parallel_grain;
    parallel_for(chunks, chunks > 1, [&](index_t chunk, int) {
        const index_t begin = chunk * parallel_grain;
        body(begin, std::min(parallel_grain, size - begin));
    });
}

// A buffer of at least `count` values for the calling thread, reused across calls, its
// contents unspecified. One per thread, element type and slot: code that holds one while
// calling code that takes another uses a different slot (gemm takes slots 1 and 2).
// 64-byte aligned, so that vector loads from it stay within cache lines.
template <class T, int Slot = 0>
T* thread_scratch(index_t count) {
    struct Free {
        void operator()(T* p) const { std::free(p); }
    };
    thread_local std::unique_ptr<T, Free> buffer;
    thread_local index_t capacity = 0;
    if (count > capacity) {
        buffer.reset();
        capacity = 0;  // stays 0 if the allocation below fails
        const std::size_t bytes = (static_cast<std::size_t>(count) * sizeof(T) + 63) / 64 * 64;
        buffer.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
        if (!buffer) throw std::bad_alloc();
        capacity = count;
    }
    return buffer.get();
}

}  // inline namespace
}  // namespace gradcam::detail
