// Threads through OpenMP when the program is compiled with it (-fopenmp), one thread
// otherwise. Ops split independent work (images of a batch, channel planes) across threads;
// inside a single large product, Eigen's GEMM uses the threads itself.
#pragma once

#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gradcam/shape.hpp"

namespace gradcam::detail {

inline int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// Below this many values an elementwise or pooling op runs on one thread: the threads would
// cost more than they save.
inline constexpr index_t parallel_grain = index_t(1) << 15;

// Calls body(i, thread) for i in [0, count), spread over the threads when `parallel` and
// there is more than one item; `thread` is in [0, max_threads()).
template <class Body>
void parallel_for(index_t count, bool parallel, Body&& body) {
#ifdef _OPENMP
    if (parallel && count > 1 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
        for (index_t i = 0; i < count; ++i) body(i, omp_get_thread_num());
        return;
    }
#endif
    (void)parallel;
    for (index_t i = 0; i < count; ++i) body(i, 0);
}

// A buffer of at least `count` values for the calling thread, reused across calls, its
// contents unspecified. One per thread and element type: do not hold two at once.
template <class T>
T* thread_scratch(index_t count) {
    thread_local std::unique_ptr<T[]> buffer;
    thread_local index_t capacity = 0;
    if (count > capacity) {
        buffer.reset(new T[static_cast<std::size_t>(count)]);
        capacity = count;
    }
    return buffer.get();
}

}  // namespace gradcam::detail
