// The extents of a tensor: a short list of non-negative sizes, outermost first (NCHW for
// images), with the checks and printing every op uses in its error messages.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>
#include <vector>

#include "gradcam/error.hpp"

namespace gradcam {

using index_t = std::int64_t;

class Shape {
  public:
    Shape() = default;
    Shape(std::initializer_list<index_t> dims) : dims_(dims) { check_non_negative(); }
    explicit Shape(std::vector<index_t> dims) : dims_(std::move(dims)) { check_non_negative(); }

    index_t rank() const { return static_cast<index_t>(dims_.size()); }
    index_t operator[](index_t axis) const { return dims_[static_cast<std::size_t>(axis)]; }
    const std::vector<index_t>& dims() const { return dims_; }

    // The extent of `axis`, counting from the back when negative (-1 is the last axis).
    index_t dim(index_t axis) const {
        return dims_[static_cast<std::size_t>(normalise_axis(axis))];
    }

    index_t numel() const {
        index_t n = 1;
        for (index_t d : dims_) n *= d;
        return n;
    }

    index_t normalise_axis(index_t axis) const {
        const index_t r = rank();
        if (axis < -r || axis >= r)
            throw argument_error(
                detail::concat("axis ", axis, " is out of range for shape ", to_string()));
        return axis < 0 ? axis + r : axis;
    }

    std::string to_string() const {
        std::string s = "[";
        for (std::size_t i = 0; i < dims_.size(); ++i) {
            if (i) s += ", ";
            s += std::to_string(dims_[i]);
        }
        return s + "]";
    }

    friend bool operator==(const Shape&, const Shape&) = default;

  private:
    void check_non_negative() const {
        for (index_t d : dims_)
            if (d < 0) throw shape_error("negative extent in shape " + to_string());
    }

    std::vector<index_t> dims_;
};

// A (height, width) pair for kernel sizes, strides, paddings and dilations; one number means
// the same along both axes.
struct Size2 {
    index_t h = 0, w = 0;
    Size2(index_t both) : h(both), w(both) {}  // NOLINT: implicit, so `.stride = 2` reads well
    Size2(index_t h_, index_t w_) : h(h_), w(w_) {}
    friend bool operator==(const Size2&, const Size2&) = default;
};

inline std::ostream& operator<<(std::ostream& out, const Shape& shape) {
    return out << shape.to_string();
}

namespace detail {

// Throws unless `shape` has rank `rank`; `what` names the op and operand ("conv2d input").
inline void expect_rank(const Shape& shape, index_t rank, const char* what,
                        const char* layout = nullptr) {
    if (shape.rank() != rank)
        throw shape_error(concat(what, " must have rank ", rank, layout ? " (" : "",
                                 layout ? layout : "", layout ? ")" : "", ", got shape ", shape));
}

inline void expect_same_shape(const Shape& a, const Shape& b, const char* op) {
    if (a != b) throw shape_error(concat(op, ": operand shapes differ: ", a, " vs ", b));
}

}  // namespace detail
}  // namespace gradcam
