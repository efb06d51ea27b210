// Eigen views over raw tensor storage: the only place the library names Eigen types.
#pragma once

// GCC 12 reports its own AVX-512 intrinsics (_mm512_undefined_*) as reading uninitialised
// values when Eigen inlines them (GCC bug 105593); the diagnostics are located in the
// intrinsic headers that Eigen/Core includes, so they are silenced there only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <Eigen/Core>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include "gradcam/shape.hpp"

namespace gradcam::detail {

template <class T>
using RowMajorMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixMap = Eigen::Map<RowMajorMatrix<T>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const RowMajorMatrix<T>>;
template <class T>
using VectorMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstVectorMap = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>;
template <class T>
using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstArrayMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// A rows x cols row-major matrix over `data`.
template <class T>
MatrixMap<T> matrix(T* data, index_t rows, index_t cols) {
    return MatrixMap<T>(data, rows, cols);
}
template <class T>
ConstMatrixMap<T> matrix(const T* data, index_t rows, index_t cols) {
    return ConstMatrixMap<T>(data, rows, cols);
}
// A rows x cols row-major block whose rows start `stride` values apart (a range of columns of
// a wider matrix).
template <class T>
using StridedMatrixMap = Eigen::Map<RowMajorMatrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
using ConstStridedMatrixMap = Eigen::Map<const RowMajorMatrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
StridedMatrixMap<T> matrix(T* data, index_t rows, index_t cols, index_t stride) {
    return StridedMatrixMap<T>(data, rows, cols, Eigen::OuterStride<>(stride));
}
template <class T>
ConstStridedMatrixMap<T> matrix(const T* data, index_t rows, index_t cols, index_t stride) {
    return ConstStridedMatrixMap<T>(data, rows, cols, Eigen::OuterStride<>(stride));
}

template <class T>
ArrayMap<T> array(T* data, index_t size) {
    return ArrayMap<T>(data, size);
}
template <class T>
ConstArrayMap<T> array(const T* data, index_t size) {
    return ConstArrayMap<T>(data, size);
}

// target = value, or target += value: for a backward writing a gradient that may be the first
// contribution (GradientSink::of(i, fresh)).
template <class Target, class Value>
void assign_or_add(Target&& target, const Value& value, bool assign) {
    if (assign)
        target = value;
    else
        target += value;
}

}  // namespace gradcam::detail
