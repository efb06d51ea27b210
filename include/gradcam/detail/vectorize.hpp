// GRADCAM_INDEPENDENT_ITERATIONS, before a loop whose iterations write one buffer and read
// others that the compiler cannot tell apart from it. GCC checks such buffers for overlap at run
// time and gives up past ten pairs (the Winograd transforms read and write up to twelve rows),
// or when a store might feed a later load; the loop then runs scalar.
#pragma once

#if defined(__clang__)
#define GRADCAM_INDEPENDENT_ITERATIONS _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define GRADCAM_INDEPENDENT_ITERATIONS _Pragma("GCC ivdep")
#else
#define GRADCAM_INDEPENDENT_ITERATIONS
#endif
