// Tensor<T>: an N-d array of T in one contiguous, row-major, 64-byte aligned buffer. It copies
// like a value; ops view its storage through Eigen maps (see detail/eigen.hpp) for the maths.
// Large buffers come from, and go back to, the buffer cache (buffer_cache.hpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <type_traits>
#include <typeindex>
#include <vector>

#include "gradcam/buffer_cache.hpp"
#include "gradcam/shape.hpp"

namespace gradcam {

namespace detail {

// Returns a buffer to the cache it came from, which needs its size.
struct BufferRelease {
    std::size_t bytes = 0;
    void operator()(void* p) const noexcept { BufferCache::instance().release(p, bytes); }
};

template <class T>
using Buffer = std::unique_ptr<T[], BufferRelease>;

// Guards every tensor's derived values (Tensor::derived); taken once per use, not per element.
inline std::mutex& derived_mutex() {
    static std::mutex m;
    return m;
}

template <class T>
Buffer<T> allocate_aligned(index_t count) {
    if (count == 0) return nullptr;
    if (static_cast<std::size_t>(count) > std::numeric_limits<std::size_t>::max() / sizeof(T))
        throw std::bad_alloc();
    const std::size_t bytes = BufferCache::rounded(static_cast<std::size_t>(count) * sizeof(T));
    return Buffer<T>(static_cast<T*>(BufferCache::instance().acquire(bytes)), BufferRelease{bytes});
}

}  // namespace detail

template <class T>
class Tensor {
    static_assert(std::is_arithmetic_v<T>, "Tensor<T> holds arithmetic values");

  public:
    using value_type = T;

    // An empty tensor, shape [0].
    Tensor() = default;

    // A zero-filled tensor.
    explicit Tensor(Shape shape) : Tensor(std::move(shape), T(0)) {}

    Tensor(Shape shape, T fill)
        : shape_(std::move(shape)), data_(detail::allocate_aligned<T>(shape_.numel())) {
        std::fill_n(data_.get(), size(), fill);
    }

    Tensor(Shape shape, std::span<const T> values)
        : shape_(std::move(shape)), data_(detail::allocate_aligned<T>(shape_.numel())) {
        if (static_cast<index_t>(values.size()) != shape_.numel())
            throw shape_error(detail::concat("Tensor: ", values.size(), " values given for shape ",
                                             shape_, ", which holds ", shape_.numel()));
        std::copy(values.begin(), values.end(), data_.get());
    }

    Tensor(Shape shape, std::initializer_list<T> values)
        : Tensor(std::move(shape), std::span<const T>(values.begin(), values.size())) {}

    // Storage whose contents are unspecified: for ops that overwrite every element.
    static Tensor uninitialized(Shape shape) {
        Tensor t;
        t.shape_ = std::move(shape);
        t.data_ = detail::allocate_aligned<T>(t.shape_.numel());
        return t;
    }

    Tensor(const Tensor& other) : Tensor(uninitialized(other.shape_)) {
        std::copy_n(other.data(), size(), data());
    }
    Tensor& operator=(const Tensor& other) {
        if (this != &other) *this = Tensor(other);
        return *this;
    }
    Tensor(Tensor&& other) noexcept
        : shape_(std::move(other.shape_)), data_(std::move(other.data_)) {
        other.shape_ = Shape{0};
        other.forget_derived();
    }
    Tensor& operator=(Tensor&& other) noexcept {
        shape_ = std::move(other.shape_);
        data_ = std::move(other.data_);
        other.shape_ = Shape{0};
        forget_derived();
        other.forget_derived();
        return *this;
    }

    const Shape& shape() const { return shape_; }
    index_t rank() const { return shape_.rank(); }
    index_t dim(index_t axis) const { return shape_.dim(axis); }
    index_t size() const { return shape_.numel(); }
    bool empty() const { return size() == 0; }

    // Every access that can write (the non-const ones) marks derived values stale.
    T* data() {
        touch();
        return data_.get();
    }
    const T* data() const { return data_.get(); }
    std::span<T> values() { return {data(), static_cast<std::size_t>(size())}; }
    std::span<const T> values() const { return {data(), static_cast<std::size_t>(size())}; }
    T* begin() { return data(); }
    T* end() { return data() + size(); }
    const T* begin() const { return data(); }
    const T* end() const { return data() + size(); }

    T& operator[](index_t flat) {
        touch();
        return data_[static_cast<std::size_t>(flat)];
    }
    const T& operator[](index_t flat) const { return data_[static_cast<std::size_t>(flat)]; }

    // Element access by one index per axis, checked against the shape.
    template <class... I>
    requires(std::is_integral_v<I>&&...) T& operator()(I... index) {
        touch();
        return data_[static_cast<std::size_t>(offset_of({static_cast<index_t>(index)...}))];
    }
    template <class... I>
    requires(std::is_integral_v<I>&&...) const T& operator()(I... index) const {
        return data_[static_cast<std::size_t>(offset_of({static_cast<index_t>(index)...}))];
    }

    // The same values under another shape with the same number of elements.
    Tensor reshaped(Shape shape) const& { return Tensor(*this).reshaped(std::move(shape)); }
    Tensor reshaped(Shape shape) && {
        if (shape.numel() != size())
            throw shape_error(detail::concat("reshape: cannot view shape ", shape_, " as ", shape,
                                             " (", size(), " vs ", shape.numel(), " elements)"));
        Tensor t(std::move(*this));
        t.shape_ = std::move(shape);
        t.forget_derived();
        return t;
    }

    // The n-th sub-tensor along the first axis (one image of a batch), as a copy.
    Tensor subtensor(index_t n) const {
        if (rank() < 1 || n < 0 || n >= shape_[0])
            throw shape_error(
                detail::concat("subtensor: index ", n, " is out of range for shape ", shape_));
        std::vector<index_t> dims(shape_.dims().begin() + 1, shape_.dims().end());
        const index_t count = size() / shape_[0];
        return Tensor(Shape(std::move(dims)),
                      std::span<const T>(data() + n * count, static_cast<std::size_t>(count)));
    }

    template <class U>
    Tensor<U> cast() const {
        Tensor<U> out = Tensor<U>::uninitialized(shape_);
        std::transform(begin(), end(), out.begin(), [](T v) { return static_cast<U>(v); });
        return out;
    }

    void fill(T value) { std::fill_n(data(), size(), value); }

    // A value computed from this tensor's values by make(*this), such as a convolution's
    // weights laid out for its matrix products, made on first use and kept until the values
    // change. One per type D and key. The tensor sees a change through its non-const
    // accessors: a pointer from data() kept and written through after a use here leaves
    // the kept value stale. Safe to call from several threads at once.
    template <class D, class Make>
    std::shared_ptr<const D> derived(std::size_t key, Make&& make) const {
        std::lock_guard lock(detail::derived_mutex());
        if (stale_.load(std::memory_order_relaxed)) {
            derived_.clear();
            stale_.store(false, std::memory_order_relaxed);
        }
        for (const Derived& d : derived_)
            if (d.type == typeid(D) && d.key == key) return std::static_pointer_cast<const D>(d.value);
        std::shared_ptr<const D> value = std::make_shared<const D>(make(*this));
        derived_.push_back({typeid(D), key, value});
        return value;
    }

  private:
    struct Derived {
        std::type_index type;
        std::size_t key;
        std::shared_ptr<const void> value;
    };

    void touch() {
        // A load first: element loops then write nothing but the element.
        if (!stale_.load(std::memory_order_relaxed)) stale_.store(true, std::memory_order_relaxed);
    }
    // Only where the tensor itself changes (moves, reshapes): no other thread may use it then.
    void forget_derived() { derived_.clear(); }

    index_t offset_of(std::initializer_list<index_t> index) const {
        if (static_cast<index_t>(index.size()) != rank())
            throw shape_error(detail::concat("Tensor: ", index.size(),
                                             " indices given for a tensor of shape ", shape_));
        index_t offset = 0, axis = 0;
        for (index_t i : index) {
            if (i < 0 || i >= shape_[axis])
                throw shape_error(detail::concat("Tensor: index ", i, " on axis ", axis,
                                                 " is out of range for shape ", shape_));
            offset = offset * shape_[axis] + i;
            ++axis;
        }
        return offset;
    }

    Shape shape_{0};
    detail::Buffer<T> data_;
    mutable std::vector<Derived> derived_;
    mutable std::atomic<bool> stale_{false};
};

// Largest |a - b| over all elements; shapes must match.
template <class T>
T max_abs_difference(const Tensor<T>& a, const Tensor<T>& b) {
    detail::expect_same_shape(a.shape(), b.shape(), "max_abs_difference");
    T worst = 0;
    for (index_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
    return worst;
}

template <class T>
T max_abs(const Tensor<T>& a) {
    T m = 0;
    for (T v : a) m = std::max(m, std::abs(v));
    return m;
}

}  // namespace gradcam
