// Tensor and Shape: value semantics, indexing, reshaping, and the messages of their errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "gradcam/tensor.hpp"

using gradcam::index_t;
using gradcam::Shape;
using gradcam::Tensor;

TEST_CASE("tensor: construction, indexing and value semantics") {
    Tensor<float> t(Shape{2, 3}, {1, 2, 3, 4, 5, 6});
    CHECK(t.size() == 6);
    CHECK(t.rank() == 2);
    CHECK(t(1, 2) == 6);
    CHECK(t(0, 1) == 2);
    CHECK(t.dim(-1) == 3);

    Tensor<float> copy = t;
    copy(0, 0) = 42;
    CHECK(t(0, 0) == 1);  // a copy owns its own storage
    Tensor<float> moved = std::move(copy);
    CHECK(moved(0, 0) == 42);
    CHECK(copy.size() == 0);

    CHECK(Tensor<double>(Shape{4}).values()[3] == 0.0);  // zero-filled by default
    CHECK(Tensor<float>(Shape{}, 7.0f).size() == 1);     // a scalar has shape []
    CHECK(Tensor<float>(Shape{}, 7.0f)[0] == 7.0f);
    CHECK(reinterpret_cast<std::uintptr_t>(Tensor<float>(Shape{3, 5}).data()) % 64 == 0);
}

TEST_CASE("tensor: reshape keeps values and checks the element count") {
    Tensor<int> t(Shape{2, 3}, {0, 1, 2, 3, 4, 5});
    Tensor<int> r = t.reshaped(Shape{3, 2});
    CHECK(r(2, 1) == 5);
    CHECK(r.shape() == Shape{3, 2});
    CHECK_THROWS_WITH_AS(t.reshaped(Shape{4, 2}),
                         "reshape: cannot view shape [2, 3] as [4, 2] (6 vs 8 elements)",
                         gradcam::shape_error);
    CHECK(t.cast<double>()(1, 1) == 4.0);
}

TEST_CASE("tensor: errors name the shape and the offending index") {
    Tensor<float> t(Shape{2, 3});
    CHECK_THROWS_WITH_AS(t(2, 0), "Tensor: index 2 on axis 0 is out of range for shape [2, 3]",
                         gradcam::shape_error);
    CHECK_THROWS_WITH_AS(t(1), "Tensor: 1 indices given for a tensor of shape [2, 3]",
                         gradcam::shape_error);
    CHECK_THROWS_WITH_AS((Tensor<float>(Shape{2, 2}, {1.0f, 2.0f, 3.0f})),
                         "Tensor: 3 values given for shape [2, 2], which holds 4",
                         gradcam::shape_error);
    CHECK_THROWS_AS(Shape({2, -1}), gradcam::shape_error);
    CHECK_THROWS_WITH_AS(Shape({2, 3}).normalise_axis(2), "axis 2 is out of range for shape [2, 3]",
                         gradcam::argument_error);
    CHECK(Shape({2, 3}).normalise_axis(-1) == 1);
}

TEST_CASE("tensor: large buffers are reused by size, within the cache's limit") {
    using gradcam::detail::BufferCache;
    gradcam::release_buffer_cache();
    const std::size_t saved = gradcam::buffer_cache_limit();
    gradcam::set_buffer_cache_limit(std::size_t(256) << 20);  // on, also under ASan
    const index_t large = index_t(1) << 17;  // 512 KiB of float: cached
    const std::size_t block = BufferCache::rounded(large * sizeof(float));
    auto address = [](const Tensor<float>& t) { return reinterpret_cast<std::uintptr_t>(t.data()); };
    std::uintptr_t first = 0;
    {
        Tensor<float> t(Shape{large}, 7.0f);
        first = address(t);
    }
    CHECK(gradcam::buffer_cache_size() == block);
    {
        const Tensor<float> zeros(Shape{2, large / 2});  // same byte size: the kept block,
        CHECK(address(zeros) == first);                   // zeroed again
        CHECK(std::all_of(zeros.begin(), zeros.end(), [](float v) { return v == 0; }));
        CHECK(gradcam::buffer_cache_size() == 0);
        const Tensor<float> larger(Shape{large + 2048});  // a larger size: not that block
        CHECK(address(larger) != first);
    }
    CHECK(gradcam::buffer_cache_size() == block + BufferCache::rounded((large + 2048) * sizeof(float)));
    // Small buffers are left to malloc.
    { Tensor<float> small(Shape{1000}); }
    CHECK(gradcam::buffer_cache_size() == block + BufferCache::rounded((large + 2048) * sizeof(float)));

    // At the limit, a freed block takes the place of blocks of other sizes.
    gradcam::set_buffer_cache_limit(block);
    CHECK(gradcam::buffer_cache_size() <= block);
    { Tensor<float> t(Shape{large / 2 + 1024}); }
    CHECK(gradcam::buffer_cache_size() == BufferCache::rounded((large / 2 + 1024) * sizeof(float)));
    gradcam::set_buffer_cache_limit(0);
    CHECK(gradcam::buffer_cache_size() == 0);
    { Tensor<float> t(Shape{large}); }
    CHECK(gradcam::buffer_cache_size() == 0);  // off: freed at once
    gradcam::set_buffer_cache_limit(std::size_t(256) << 20);
    { Tensor<float> t(Shape{large}); }
    CHECK(gradcam::buffer_cache_size() > 0);
    gradcam::release_buffer_cache();
    CHECK(gradcam::buffer_cache_size() == 0);
    gradcam::set_buffer_cache_limit(saved);
}

TEST_CASE("tensor: derived values are kept until a write access, per type and key") {
    Tensor<float> t(Shape{3}, {1, 2, 3});
    int made = 0;
    auto total = [&](const Tensor<float>& x) {
        ++made;
        float s = 0;
        for (float v : x.values()) s += v;
        return s;
    };
    const Tensor<float>& view = t;
    CHECK(*view.derived<float>(0, total) == 6);
    CHECK(*view.derived<float>(0, total) == 6);
    CHECK(view[2] == 3);  // const access keeps it
    CHECK(made == 1);
    CHECK(*view.derived<float>(1, total) == 6);  // another key is another value
    CHECK(*view.derived<double>(0, [](const Tensor<float>&) { return 0.5; }) == 0.5);
    CHECK(made == 2);

    t[0] = 10;  // each kind of write access makes it again
    CHECK(*view.derived<float>(0, total) == 15);
    t(1) = 20;
    CHECK(*view.derived<float>(0, total) == 33);
    t.data()[2] = 30;
    CHECK(*view.derived<float>(0, total) == 60);
    std::fill(t.begin(), t.end(), 1.0f);
    CHECK(*view.derived<float>(0, total) == 3);
    t.fill(2);
    CHECK(*view.derived<float>(0, total) == 6);
    t = Tensor<float>(Shape{2}, {5, 5});
    CHECK(*view.derived<float>(0, total) == 10);
    CHECK(made == 8);

    // A value handed out stays valid after the tensor has moved on.
    auto kept = view.derived<float>(0, total);
    t[0] = 0;
    Tensor<float> moved = std::move(t);
    CHECK(*kept == 10);
    CHECK(*std::as_const(moved).derived<float>(0, total) == 5);
    CHECK(*std::as_const(moved).reshaped(Shape{1, 2}).derived<float>(0, total) == 5);
}
