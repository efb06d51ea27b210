// The exceptions gradcam throws. Every message names the operation or file, and the
// layer, key or shapes involved, so a user can fix the call without a debugger.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace gradcam {

class error : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// A tensor has the wrong rank or extents for the operation.
class shape_error : public error {
  public:
    using error::error;
};

// A name was not found: a layer, a parameter, a tensor key.
class lookup_error : public error {
  public:
    using error::error;
};

// A file could not be read, written or parsed.
class io_error : public error {
  public:
    using error::error;
};

// A valid request that this library does not support (a dtype, a target kind for a method).
class unsupported_error : public error {
  public:
    using error::error;
};

// An argument outside its domain: a zero stride, a negative class index.
class argument_error : public error {
  public:
    using error::error;
};

namespace detail {

template <class... Parts>
std::string concat(const Parts&... parts) {
    std::ostringstream out;
    (out << ... << parts);
    return out.str();
}

}  // namespace detail
}  // namespace gradcam

// Internal invariants: checked in debug builds, compiled out with NDEBUG.
#ifdef NDEBUG
#define GRADCAM_ASSERT(condition) ((void)0)
#else
#include <cstdio>
#include <cstdlib>
#define GRADCAM_ASSERT(condition)                                                            \
    ((condition) ? (void)0                                                                   \
                 : (std::fprintf(stderr, "gradcam: internal invariant failed: %s (%s:%d)\n", \
                                 #condition, __FILE__, __LINE__),                            \
                    std::abort()))
#endif
