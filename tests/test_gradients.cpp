// Every op's backward against central differences in double (see gradient_check.hpp), the
// three ReLU backward rules on hand-computed cases, and the float forward against double.
// GRADCAM_GRADIENT_REPORT=1 prints the worst error of each check.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "gradcam/ops/arithmetic.hpp"
#include "gradcam/ops/batch_norm.hpp"
#include "gradcam/ops/conv.hpp"
#include "gradcam/ops/dropout.hpp"
#include "gradcam/ops/fused.hpp"
#include "gradcam/ops/linear.hpp"
#include "gradcam/ops/loss.hpp"
#include "gradcam/ops/pool.hpp"
#include "gradcam/ops/reduce.hpp"
#include "gradcam/ops/relu.hpp"
#include "gradcam/ops/reshape.hpp"
#include "gradcam/ops/softmax.hpp"
#include "gradient_check.hpp"

using namespace gradcam;
using gradcam::testing::away_from_zero;
using gradcam::testing::check_gradients;
using gradcam::testing::random_normal;
using gradcam::testing::scalar_of;
using gradcam::testing::well_spaced;

namespace {

// conv2d of x [N, C, H, W] by a weight [O, C/groups, kh, kw], with or without a bias.
void check_conv(const char* what, Shape x, Shape w, bool with_bias, Conv2dOptions o,
                Random& random, const gradcam::testing::CheckOptions& check = {}) {
    std::vector<Tensor<double>> inputs{random_normal(x, random), random_normal(w, random)};
    if (with_bias) {
        inputs.push_back(random_normal(Shape{w[0]}, random));
        check_gradients(
            what, inputs, [o](const auto& v) { return conv2d(v[0], v[1], v[2], o); }, random,
            check);
    } else {
        check_gradients(
            what, inputs, [o](const auto& v) { return conv2d(v[0], v[1], o); }, random, check);
    }
}

// As check_conv, for a geometry that must take the given Winograd path and form, on 400 sampled
// elements per input (tests/test_ops.cpp compares every element with the direct sum). The loss
// is linear in each element, so a wide step (1e-3) has no truncation error and divides the
// rounding of these larger sums less. In float, the transforms round more than the direct sum:
// F(2x2, 3x3) a few times (5e-6 here against 1e-6), F(4x4, 3x3), whose transforms scale by up to
// 25 and 64, 10-40 times more again (6e-5 to 2e-4).
enum class WinogradPath { untransposed, transposed_f2, transposed_f4 };

void check_winograd_conv(const char* what, Shape x, Shape w, bool with_bias, Conv2dOptions o,
                         WinogradPath path, Random& random) {
    const detail::ConvGeometry g = detail::conv_geometry(x, w, nullptr, o);
    const bool transposed = detail::winograd_transposed_applies<double>(g, w[0]);
    REQUIRE(transposed == (path != WinogradPath::untransposed));
    if (!transposed) REQUIRE(detail::winograd_applies(g, w[0]));
    if (transposed)
        REQUIRE(detail::winograd_transposed_fits<detail::WinogradF4>(g, w[0]) ==
                (path == WinogradPath::transposed_f4));
    check_conv(what, x, w, with_bias, o, random,
               {.eps = 1e-3,
                .forward_tolerance = path == WinogradPath::transposed_f2 ? 2e-5 : 5e-4,
                .sampled_elements = 400});
}

// conv2d_batch_norm of x by w, with a bias and a residual when asked, after a batch norm whose
// constants are drawn here (running_var in [0.5, 2]).
void check_conv_batch_norm(const char* what, Shape x, Shape w, Conv2dOptions o, bool with_bias,
                           bool with_residual, bool relu, Random& random,
                           const gradcam::testing::CheckOptions& check = {}) {
    const index_t out = w[0];
    const Tensor<double> mean = random_normal({out}, random), gamma = random_normal({out}, random),
                         beta = random_normal({out}, random);
    Tensor<double> var({out});
    for (double& v : var) v = random.uniform(0.5, 2.0);
    const detail::ConvGeometry g = detail::conv_geometry(x, w, nullptr, o);
    std::vector<Tensor<double>> inputs{random_normal(x, random), random_normal(w, random)};
    if (with_bias) inputs.push_back(random_normal({out}, random));
    if (with_residual) inputs.push_back(random_normal({x[0], out, g.out_h, g.out_w}, random));
    check_gradients(
        what, inputs,
        [&](const auto& v) {
            using T = scalar_of<decltype(v[0])>;
            const Tensor<T> m = mean.cast<T>(), s = var.cast<T>(), ga = gamma.cast<T>(),
                            be = beta.cast<T>();
            const Var<T> bias = with_bias ? v[2] : Var<T>();
            const Var<T> residual = with_residual ? v[with_bias ? 3 : 2] : Var<T>();
            return conv2d_batch_norm(
                v[0], v[1], bias, o,
                BatchNormConstants<T>{.running_mean = m, .running_var = s, .gamma = &ga, .beta = &be},
                residual, relu);
        },
        random, check);
}

void check_max_pool(const char* what, Shape x, Pool2dOptions o, Random& random) {
    check_gradients(
        what, {well_spaced(x, random)}, [o](const auto& v) { return max_pool2d(v[0], o); }, random);
}

void check_avg_pool(const char* what, Shape x, Pool2dOptions o, Random& random) {
    check_gradients(
        what, {random_normal(x, random)}, [o](const auto& v) { return avg_pool2d(v[0], o); },
        random);
}

void check_adaptive(const char* what, Shape x, Size2 out, Random& random) {
    check_gradients(
        what, {random_normal(x, random)},
        [out](const auto& v) { return adaptive_avg_pool2d(v[0], out); }, random);
}

}  // namespace

TEST_CASE("gradient: conv2d") {
    Random random(101);
    SUBCASE("plain") { check_conv("conv2d plain", {2, 3, 6, 7}, {4, 3, 3, 3}, false, {}, random); }
    SUBCASE("with bias") {
        check_conv("conv2d bias", {2, 3, 6, 7}, {4, 3, 3, 3}, true, {}, random);
    }
    SUBCASE("stride (2,3), padding (1,0)") {
        check_conv("conv2d stride (2,3) padding (1,0)", {2, 3, 7, 11}, {4, 3, 3, 3}, true,
                   {.stride = {2, 3}, .padding = {1, 0}}, random);
    }
    SUBCASE("dilation 2, padding 2") {
        check_conv("conv2d dilation 2 padding 2", {2, 2, 6, 7}, {3, 2, 3, 3}, true,
                   {.padding = 2, .dilation = 2}, random);
    }
    SUBCASE("groups 2") {
        check_conv("conv2d groups 2", {2, 4, 5, 6}, {6, 2, 3, 3}, true, {.padding = 1, .groups = 2},
                   random);
    }
    SUBCASE("depthwise, groups = channels") {
        check_conv("conv2d depthwise", {2, 4, 6, 5}, {4, 1, 3, 3}, true,
                   {.padding = 1, .groups = 4}, random);
    }
    SUBCASE("depthwise with channel multiplier 2") {
        check_conv("conv2d depthwise x2", {1, 3, 5, 5}, {6, 1, 3, 3}, false,
                   {.stride = 2, .groups = 3}, random);
    }
    SUBCASE("pointwise 1x1 (no im2col)") {
        check_conv("conv2d pointwise 1x1", {2, 5, 4, 6}, {3, 5, 1, 1}, true, {}, random);
    }
    SUBCASE("pointwise 1x1 with groups 2 (no im2col)") {
        check_conv("conv2d pointwise 1x1 groups 2", {2, 4, 3, 5}, {6, 2, 1, 1}, false,
                   {.groups = 2}, random);
    }
    SUBCASE("1x1 with stride 2 (through im2col)") {
        check_conv("conv2d 1x1 stride 2", {2, 3, 5, 6}, {4, 3, 1, 1}, true, {.stride = 2}, random);
    }
    // 3x3 with unit stride and 16+ channels: Winograd both ways (the weight gradient stays on
    // im2col, so it checks the forward independently). Odd output sizes leave partial tiles at
    // the edges. Outputs of 49 to 256 tiles of 4x4 outputs (28x28 to 64x64 maps, or 17x63) take
    // F(4x4, 3x3) with the products transposed; larger ones F(4x4, 3x3) untransposed; smaller
    // ones F(2x2, 3x3) transposed.
    SUBCASE("Winograd untransposed, padding 1, odd output 67x69") {
        check_winograd_conv("conv2d winograd untransposed", {1, 16, 67, 69}, {16, 16, 3, 3}, true,
                            {.padding = 1}, WinogradPath::untransposed, random);
    }
    SUBCASE("Winograd F(4x4, 3x3) transposed, padding 1, odd output 17x63") {
        check_winograd_conv("conv2d winograd padding 1", {2, 16, 17, 63}, {16, 16, 3, 3}, true,
                            {.padding = 1}, WinogradPath::transposed_f4, random);
    }
    SUBCASE("Winograd F(4x4, 3x3) transposed, no padding") {
        check_winograd_conv("conv2d winograd padding 0", {1, 16, 20, 66}, {17, 16, 3, 3}, false,
                            {}, WinogradPath::transposed_f4, random);
    }
    SUBCASE("Winograd F(4x4, 3x3) transposed, padding (2, 1)") {
        check_winograd_conv("conv2d winograd padding (2,1)", {1, 18, 15, 63}, {16, 18, 3, 3},
                            true, {.padding = {2, 1}}, WinogradPath::transposed_f4, random);
    }
    SUBCASE("Winograd forward, padding 3 (the input gradient through col2im)") {
        check_winograd_conv("conv2d winograd padding 3", {1, 16, 13, 59}, {16, 16, 3, 3}, false,
                            {.padding = 3}, WinogradPath::transposed_f4, random);
    }
    SUBCASE("Winograd F(2x2, 3x3) transposed, padding 1, odd output 7x9") {
        check_winograd_conv("conv2d winograd transposed padding 1", {2, 16, 7, 9}, {17, 16, 3, 3},
                            true, {.padding = 1}, WinogradPath::transposed_f2, random);
    }
    SUBCASE("Winograd F(2x2, 3x3) transposed, 7x7 output (16 tiles, 8-row register tiles)") {
        check_winograd_conv("conv2d winograd transposed 7x7", {1, 16, 7, 7}, {20, 16, 3, 3}, true,
                            {.padding = 1}, WinogradPath::transposed_f2, random);
    }
    SUBCASE("Winograd F(2x2, 3x3) transposed, no padding") {
        check_winograd_conv("conv2d winograd transposed padding 0", {1, 18, 10, 12},
                            {16, 18, 3, 3}, false, {}, WinogradPath::transposed_f2, random);
    }
    SUBCASE("non-square kernel") {
        check_conv("conv2d kernel 2x4", {2, 3, 5, 8}, {4, 3, 2, 4}, true,
                   {.stride = {1, 2}, .padding = {1, 2}}, random);
    }
}

TEST_CASE("gradient: conv2d_batch_norm (convolution, batch norm, residual and ReLU in one op)") {
    Random random(107);
    SUBCASE("batch norm alone, with the convolution's bias") {
        check_conv_batch_norm("conv+bn", {2, 3, 6, 7}, {4, 3, 3, 3}, {.padding = 1}, true, false,
                              false, random);
    }
    SUBCASE("with ReLU, stride 2") {
        check_conv_batch_norm("conv+bn+relu", {2, 3, 7, 7}, {5, 3, 3, 3},
                              {.stride = 2, .padding = 1}, false, false, true, random);
    }
    SUBCASE("residual without ReLU, pointwise") {
        check_conv_batch_norm("conv+bn+add 1x1", {2, 4, 5, 6}, {6, 4, 1, 1}, {}, false, true,
                              false, random);
    }
    SUBCASE("residual and ReLU, with bias, groups 2") {
        check_conv_batch_norm("conv+bn+add+relu groups", {2, 4, 6, 5}, {6, 2, 3, 3},
                              {.padding = 1, .groups = 2}, true, true, true, random);
    }
    SUBCASE("residual and ReLU through transposed Winograd") {
        const Shape x{1, 16, 7, 9}, w{16, 16, 3, 3};
        REQUIRE(detail::winograd_transposed_applies<double>(
            detail::conv_geometry(x, w, nullptr, {.padding = 1}), w[0]));
        check_conv_batch_norm("conv+bn+add+relu Winograd", x, w, {.padding = 1}, false, true, true,
                              random, {.forward_tolerance = 2e-5, .sampled_elements = 300});
    }
}

TEST_CASE("gradient: conv2d_relu (a convolution and its ReLU in one op)") {
    Random random(109);
    SUBCASE("3x3, stride 2, with bias") {
        check_gradients(
            "conv+relu",
            {random_normal({2, 3, 7, 7}, random), random_normal({5, 3, 3, 3}, random),
             random_normal({5}, random)},
            [](const auto& v) {
                return conv2d_relu(v[0], v[1], v[2], {.stride = 2, .padding = 1});
            },
            random);
    }
    SUBCASE("1x1, without bias") {
        check_gradients(
            "conv+relu 1x1",
            {random_normal({2, 4, 5, 6}, random), random_normal({6, 4, 1, 1}, random)},
            [](const auto& v) { return conv2d_relu(v[0], v[1], Var<scalar_of<decltype(v[0])>>()); },
            random);
    }
}

TEST_CASE("gradient: linear") {
    Random random(202);
    const std::vector<Tensor<double>> inputs{
        random_normal({3, 5}, random), random_normal({4, 5}, random), random_normal({4}, random)};
    SUBCASE("with bias") {
        check_gradients(
            "linear bias", inputs, [](const auto& v) { return linear(v[0], v[1], v[2]); }, random);
    }
    SUBCASE("without bias") {
        check_gradients(
            "linear", {inputs[0], inputs[1]}, [](const auto& v) { return linear(v[0], v[1]); },
            random);
    }
}

TEST_CASE("gradient: max_pool2d") {
    Random random(303);
    SUBCASE("non-overlapping 2x2") { check_max_pool("max_pool2d 2x2", {2, 3, 6, 8}, {}, random); }
    SUBCASE("overlapping: kernel 3, stride 2, padding 1") {
        check_max_pool("max_pool2d k3 s2 p1", {2, 2, 7, 9},
                       {.kernel = 3, .stride = 2, .padding = 1}, random);
    }
    SUBCASE("ceil_mode") {
        check_max_pool("max_pool2d ceil_mode 7x8", {1, 3, 7, 8},
                       {.kernel = 2, .stride = 2, .ceil_mode = true}, random);
        check_max_pool("max_pool2d ceil_mode k3 s2 p1", {1, 2, 8, 6},
                       {.kernel = 3, .stride = 2, .padding = 1, .ceil_mode = true}, random);
    }
    SUBCASE("dilation") {
        check_max_pool("max_pool2d dilation 2", {2, 2, 8, 9},
                       {.kernel = 3, .stride = 1, .dilation = 2}, random);
        check_max_pool("max_pool2d dilation 2 p1 s2", {1, 2, 9, 8},
                       {.kernel = 3, .stride = 2, .padding = 1, .dilation = 2}, random);
    }
    SUBCASE("non-square kernel and stride") {
        check_max_pool("max_pool2d kernel 2x3 stride (1,2)", {1, 2, 5, 9},
                       {.kernel = {2, 3}, .stride = {1, 2}}, random);
    }
}

// A window that dilation makes skip the whole input sees only padding: its output is -inf,
// as in PyTorch, and it sends no gradient anywhere (it used to write outside the buffer).
TEST_CASE("gradient: max_pool2d window that covers only padding") {
    Tape<double> tape;
    const Var<double> x = tape.variable(Tensor<double>({1, 2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8}));
    const Var<double> y = max_pool2d(x, {.kernel = 2, .stride = 1, .padding = 1, .dilation = 3});
    REQUIRE(y.shape() == Shape{1, 2, 1, 1});
    CHECK(y.value()[0] == -std::numeric_limits<double>::infinity());
    const Tensor<double> dx = tape.gradient(y, Tensor<double>(y.shape(), 1.0), {x})[0];
    CHECK(max_abs(dx) == 0);
}

TEST_CASE("gradient: avg_pool2d") {
    Random random(404);
    SUBCASE("plain 2x2") { check_avg_pool("avg_pool2d 2x2", {2, 3, 6, 8}, {}, random); }
    SUBCASE("padding, count_include_pad true") {
        check_avg_pool("avg_pool2d k3 s2 p1 include_pad", {2, 2, 7, 8},
                       {.kernel = 3, .stride = 2, .padding = 1, .count_include_pad = true}, random);
    }
    SUBCASE("padding, count_include_pad false") {
        check_avg_pool("avg_pool2d k3 s2 p1 exclude_pad", {2, 2, 7, 8},
                       {.kernel = 3, .stride = 2, .padding = 1, .count_include_pad = false},
                       random);
    }
    SUBCASE("ceil_mode") {
        check_avg_pool("avg_pool2d ceil_mode 7x7", {1, 3, 7, 7},
                       {.kernel = 2, .stride = 2, .ceil_mode = true}, random);
        check_avg_pool("avg_pool2d ceil_mode p1 include_pad", {1, 2, 8, 6},
                       {.kernel = 3, .stride = 2, .padding = 1, .ceil_mode = true}, random);
        check_avg_pool(
            "avg_pool2d ceil_mode p1 exclude_pad", {1, 2, 8, 6},
            {.kernel = 3, .stride = 2, .padding = 1, .ceil_mode = true, .count_include_pad = false},
            random);
    }
    SUBCASE("non-square kernel and stride") {
        check_avg_pool("avg_pool2d kernel 2x3 stride (1,2)", {1, 2, 5, 9},
                       {.kernel = {2, 3}, .stride = {1, 2}}, random);
    }
}

TEST_CASE("gradient: adaptive_avg_pool2d") {
    Random random(505);
    SUBCASE("7x7 to 3x3 (bins overlap)") {
        check_adaptive("adaptive_avg_pool2d 7->3", {2, 3, 7, 7}, 3, random);
    }
    SUBCASE("5x6 to 2x4") {
        check_adaptive("adaptive_avg_pool2d 5x6->2x4", {2, 2, 5, 6}, {2, 4}, random);
    }
    SUBCASE("global 1x1") { check_adaptive("adaptive_avg_pool2d global", {2, 3, 4, 5}, 1, random); }
    SUBCASE("3x2 to 5x4 (upsampling)") {
        check_adaptive("adaptive_avg_pool2d 3x2->5x4", {1, 2, 3, 2}, {5, 4}, random);
    }
    // Bins that divide the input write the gradient when nothing has reached it yet, and add
    // to it when something has: here the second pooling of the same input.
    SUBCASE("6x4 to 3x2 (bins divide the input), and pooled twice") {
        check_adaptive("adaptive_avg_pool2d 6x4->3x2", {2, 3, 6, 4}, {3, 2}, random);
        check_gradients(
            "adaptive_avg_pool2d twice", {random_normal({2, 3, 6, 4}, random)},
            [](const auto& v) { return adaptive_avg_pool2d(v[0], {3, 2}) + adaptive_avg_pool2d(v[0], {3, 2}); },
            random);
    }
    // One value per bin, as VGG's 7x7 pooling of 224x224 images: a copy, whose backward passes
    // dy on (or adds it, the second time).
    SUBCASE("5x4 to 5x4 (a copy), and pooled twice") {
        check_adaptive("adaptive_avg_pool2d 5x4->5x4", {2, 3, 5, 4}, {5, 4}, random);
        check_gradients(
            "adaptive_avg_pool2d 5x4->5x4 twice", {random_normal({2, 3, 5, 4}, random)},
            [](const auto& v) {
                return adaptive_avg_pool2d(v[0], {5, 4}) * adaptive_avg_pool2d(v[0], {5, 4});
            },
            random);
    }
}

TEST_CASE("gradient: relu") {
    Random random(606);
    check_gradients(
        "relu", {away_from_zero({2, 3, 4, 5}, random)}, [](const auto& v) { return relu(v[0]); },
        random);
}

TEST_CASE("gradient: elementwise arithmetic") {
    Random random(707);
    const std::vector<Tensor<double>> ab{random_normal({2, 3, 4}, random),
                                         random_normal({2, 3, 4}, random)};
    SUBCASE("add") {
        check_gradients(
            "add", ab, [](const auto& v) { return add(v[0], v[1]); }, random);
    }
    SUBCASE("sub") {
        check_gradients(
            "sub", ab, [](const auto& v) { return sub(v[0], v[1]); }, random);
    }
    SUBCASE("mul") {
        check_gradients(
            "mul", ab, [](const auto& v) { return mul(v[0], v[1]); }, random);
    }
    SUBCASE("scale") {
        check_gradients(
            "scale", {ab[0]},
            [](const auto& v) { return scale(v[0], scalar_of<decltype(v[0])>(-0.75)); }, random);
    }
    SUBCASE("operators") {
        check_gradients(
            "operators a*b - 2a + (-b)", ab,
            [](const auto& v) {
                using T = scalar_of<decltype(v[0])>;
                return v[0] * v[1] - T(2) * v[0] + (-v[1]);
            },
            random);
    }
    // One node reading the same input twice: both of its slots are one accumulator.
    SUBCASE("same input on both sides") {
        check_gradients(
            "add(x, x)", {ab[0]}, [](const auto& v) { return add(v[0], v[0]); }, random);
        check_gradients(
            "sub(x, x)", {ab[0]}, [](const auto& v) { return sub(v[0], v[0]); }, random);
        check_gradients(
            "mul(x, x)", {ab[0]}, [](const auto& v) { return mul(v[0], v[0]); }, random);
    }
}

TEST_CASE("gradient: reshape, flatten, concat") {
    Random random(808);
    SUBCASE("reshape") {
        check_gradients(
            "reshape [2,3,4] -> [4,6]", {random_normal({2, 3, 4}, random)},
            [](const auto& v) {
                return reshape(v[0], {4, 6});
            },
            random);
    }
    SUBCASE("flatten") {
        check_gradients(
            "flatten [2,3,2,2]", {random_normal({2, 3, 2, 2}, random)},
            [](const auto& v) { return flatten(v[0]); }, random);
    }
    SUBCASE("concat along axis 1, two inputs") {
        check_gradients(
            "concat axis 1 (2 inputs)",
            {random_normal({2, 3, 4}, random), random_normal({2, 1, 4}, random)},
            [](const auto& v) { return concat(v, 1); }, random);
    }
    SUBCASE("concat along axis 1, three inputs") {
        check_gradients(
            "concat axis 1 (3 inputs)",
            {random_normal({2, 2, 3, 2}, random), random_normal({2, 3, 3, 2}, random),
             random_normal({2, 1, 3, 2}, random)},
            [](const auto& v) { return concat(v, 1); }, random);
    }
    SUBCASE("concat along axis 0, two inputs") {
        check_gradients(
            "concat axis 0 (2 inputs)",
            {random_normal({1, 3, 4}, random), random_normal({2, 3, 4}, random)},
            [](const auto& v) { return concat(v, 0); }, random);
    }
    SUBCASE("concat along axis 0, three inputs") {
        check_gradients(
            "concat axis 0 (3 inputs)",
            {random_normal({2, 3}, random), random_normal({1, 3}, random),
             random_normal({3, 3}, random)},
            [](const auto& v) { return concat(v, 0); }, random);
    }
    SUBCASE("concat along the last axis") {
        check_gradients(
            "concat axis -1 (3 inputs)",
            {random_normal({2, 3, 2}, random), random_normal({2, 3, 1}, random),
             random_normal({2, 3, 3}, random)},
            [](const auto& v) { return concat(v, -1); }, random);
    }
    SUBCASE("concat of one input with itself") {
        check_gradients(
            "concat {x, a, x} axis 1",
            {random_normal({2, 2, 3}, random), random_normal({2, 1, 3}, random)},
            [](const auto& v) {
                return concat(std::vector{v[0], v[1], v[0]}, 1);
            },
            random);
    }
}

TEST_CASE("gradient: subsample_pad_channels (the option-A shortcut)") {
    Random random(31);
    check_gradients(
        "subsample_pad_channels stride 2", {random_normal({2, 3, 5, 6}, random)},
        [](const auto& v) { return subsample_pad_channels(v[0], 2, 2); }, random);
    check_gradients(
        "subsample_pad_channels stride 1", {random_normal({1, 2, 3, 3}, random)},
        [](const auto& v) { return subsample_pad_channels(v[0], 1, 1); }, random);
}

TEST_CASE("gradient: sum, mean, select, pick") {
    Random random(909);
    const Tensor<double> x = random_normal({2, 3, 4, 5}, random);
    SUBCASE("sum") {
        check_gradients(
            "sum", {x}, [](const auto& v) { return sum(v[0]); }, random);
    }
    SUBCASE("mean") {
        check_gradients(
            "mean", {x}, [](const auto& v) { return mean(v[0]); }, random);
    }
    SUBCASE("select") {
        check_gradients(
            "select axis 0", {x}, [](const auto& v) { return select(v[0], 0, 1); }, random);
        check_gradients(
            "select axis 1", {x}, [](const auto& v) { return select(v[0], 1, 2); }, random);
        check_gradients(
            "select axis 2", {x}, [](const auto& v) { return select(v[0], 2, 0); }, random);
        check_gradients(
            "select axis -1", {x}, [](const auto& v) { return select(v[0], -1, 4); }, random);
        check_gradients(
            "select twice (axis 1 then 0)", {x},
            [](const auto& v) { return select(select(v[0], 1, 0), 0, 1); }, random);
    }
    SUBCASE("pick") {
        check_gradients(
            "pick", {random_normal({4, 5}, random)},
            [](const auto& v) {
                return pick(v[0], {4, 0, 2, 0});
            },
            random);
    }
}

TEST_CASE("gradient: softmax and log_softmax") {
    Random random(1010);
    const Tensor<double> x = random_normal({2, 3, 4}, random);
    SUBCASE("softmax") {
        check_gradients(
            "softmax axis -1", {x}, [](const auto& v) { return softmax(v[0], -1); }, random);
        check_gradients(
            "softmax axis 0", {x}, [](const auto& v) { return softmax(v[0], 0); }, random);
        check_gradients(
            "softmax axis 1", {x}, [](const auto& v) { return softmax(v[0], 1); }, random);
    }
    SUBCASE("log_softmax") {
        check_gradients(
            "log_softmax axis -1", {x}, [](const auto& v) { return log_softmax(v[0], -1); },
            random);
        check_gradients(
            "log_softmax axis 0", {x}, [](const auto& v) { return log_softmax(v[0], 0); }, random);
        check_gradients(
            "log_softmax axis 1", {x}, [](const auto& v) { return log_softmax(v[0], 1); }, random);
    }
}

TEST_CASE("gradient: batch_norm2d") {
    Random random(1111);
    const index_t channels = 3;
    const Tensor<double> x = random_normal({2, channels, 4, 5}, random);
    const Tensor<double> gamma = random_normal({channels}, random),
                         beta = random_normal({channels}, random);
    const Tensor<double> running_mean = random_normal({channels}, random);
    Tensor<double> running_var({channels});
    for (double& v : running_var) v = random.uniform(0.5, 2.0);
    // The running statistics are constants of the op, converted to the scalar type in use.
    auto stats = [&](auto tag) {
        using T = decltype(tag);
        return std::pair{running_mean.cast<T>(), running_var.cast<T>()};
    };

    SUBCASE("x, gamma and beta") {
        check_gradients(
            "batch_norm2d affine", {x, gamma, beta},
            [&](const auto& v) {
                const auto [mean, var] = stats(scalar_of<decltype(v[0])>());
                return batch_norm2d(v[0], v[1], v[2], mean, var);
            },
            random);
    }
    SUBCASE("without gamma and beta") {
        check_gradients(
            "batch_norm2d no affine", {x},
            [&](const auto& v) {
                using T = scalar_of<decltype(v[0])>;
                const auto [mean, var] = stats(T());
                return batch_norm2d(v[0], Var<T>(), Var<T>(), mean, var);
            },
            random);
    }
    SUBCASE("gamma only") {
        check_gradients(
            "batch_norm2d gamma only", {x, gamma},
            [&](const auto& v) {
                using T = scalar_of<decltype(v[0])>;
                const auto [mean, var] = stats(T());
                return batch_norm2d(v[0], v[1], Var<T>(), mean, var);
            },
            random);
    }
    SUBCASE("beta only") {
        check_gradients(
            "batch_norm2d beta only", {x, beta},
            [&](const auto& v) {
                using T = scalar_of<decltype(v[0])>;
                const auto [mean, var] = stats(T());
                return batch_norm2d(v[0], Var<T>(), v[1], mean, var);
            },
            random);
    }
}

// The training path: batch norm with batch statistics (whose mean and variance depend on x),
// cross-entropy, and dropout with a fixed mask.
TEST_CASE("gradient: training ops") {
    Random random(2024);
    SUBCASE("batch_norm2d with batch statistics") {
        const index_t channels = 3;
        check_gradients(
            "batch_norm2d training",
            {random_normal({4, channels, 3, 2}, random), random_normal({channels}, random),
             random_normal({channels}, random)},
            [&](const auto& v) {
                using T = scalar_of<decltype(v[0])>;
                Tensor<T> running_mean(Shape{channels}), running_var(Shape{channels}, T(1));
                return batch_norm2d_training(v[0], v[1], v[2], running_mean, running_var);
            },
            random);
        check_gradients(
            "batch_norm2d training, no affine", {random_normal({2, 2, 3, 3}, random)},
            [&](const auto& v) {
                using T = scalar_of<decltype(v[0])>;
                Tensor<T> running_mean(Shape{2}), running_var(Shape{2}, T(1));
                return batch_norm2d_training(v[0], Var<T>(), Var<T>(), running_mean, running_var);
            },
            random);
    }
    SUBCASE("cross_entropy") {
        check_gradients(
            "cross_entropy", {random_normal({5, 4}, random)},
            [](const auto& v) {
                return cross_entropy(v[0], {3, 0, 1, 3, 2});
            },
            random);
    }
    SUBCASE("dropout in training") {
        // A fresh generator with one seed per call: every forward draws the same mask.
        check_gradients(
            "dropout training", {random_normal({3, 7}, random)},
            [](const auto& v) {
                Random mask(99);
                return dropout(v[0], 0.4, mask);
            },
            random);
    }
}

// The ops chained as in a small CNN classifier, checked end to end for the input and every
// parameter.
TEST_CASE("gradient: a small network end to end") {
    Random random(1212);
    const std::vector<Tensor<double>> inputs{
        random_normal({2, 2, 8, 8}, random),                               // image
        random_normal({4, 2, 3, 3}, random), random_normal({4}, random),   // conv
        random_normal({4}, random),          random_normal({4}, random),   // batch norm
        random_normal({3, 16}, random),      random_normal({3}, random)};  // linear
    Tensor<double> running_mean = random_normal({4}, random), running_var({4});
    for (double& v : running_var) v = random.uniform(0.5, 2.0);
    auto network = [&](const auto& v) {
        using T = scalar_of<decltype(v[0])>;
        Var<T> h = conv2d(v[0], v[1], v[2], {.padding = 1});
        h = relu(batch_norm2d(h, v[3], v[4], running_mean.cast<T>(), running_var.cast<T>()));
        h = adaptive_avg_pool2d(max_pool2d(h, {.kernel = 3, .stride = 2, .padding = 1}), 2);
        return log_softmax(linear(flatten(h), v[5], v[6]));
    };

    // The finite difference is valid only away from ReLU's kink and pooling ties; with this
    // seed the nearest pre-activation lies far enough from both for eps = 1e-6.
    {
        Tape<double> tape;
        std::vector<Var<double>> c;
        for (const auto& in : inputs) c.push_back(tape.constant(in));
        const Tensor<double> pre = batch_norm2d(conv2d(c[0], c[1], c[2], {.padding = 1}), c[3],
                                                c[4], running_mean, running_var)
                                       .value();
        double nearest = 1;
        for (double v : pre) nearest = std::min(nearest, std::abs(v));
        REQUIRE(nearest > 1e-4);
    }
    check_gradients("network conv-bn-relu-maxpool-adaptive-linear-log_softmax", inputs, network,
                    random);
}

// The three ReLU rules on a case covering every sign of (x, dy):
// x = [-2, -0.5, 0.5, 2], dy = [1, -1, -1, 1].
TEST_CASE("gradient: relu backward rules") {
    Tape<double> tape;
    const Var<double> x = tape.variable(Tensor<double>({4}, {-2, -0.5, 0.5, 2}));
    const Var<double> y = relu(x);
    const Tensor<double> dy({4}, {1, -1, -1, 1});
    auto backward = [&](ReluRule rule) {
        return tape.gradient(y, dy, {x}, GradientOptions{.relu = rule})[0];
    };
    const std::vector<double> standard{0, 0, -1, 1};  // dy * [x > 0]
    const std::vector<double> guided{0, 0, 0, 1};     // dy * [x > 0] * [dy > 0]
    const std::vector<double> deconvnet{1, 0, 0, 1};  // max(dy, 0)
    auto values = [](const Tensor<double>& t) { return std::vector<double>(t.begin(), t.end()); };

    SUBCASE("each rule") {
        CHECK(values(backward(ReluRule::standard)) == standard);
        CHECK(values(backward(ReluRule::guided)) == guided);
        CHECK(values(backward(ReluRule::deconvnet)) == deconvnet);
        CHECK(values(tape.gradient(y, dy, {x})[0]) == standard);  // the default
    }
    SUBCASE("one tape, the rules in turn, the tape unchanged") {
        const std::size_t recorded = tape.size();
        for (int round = 0; round < 2; ++round) {
            CHECK(values(backward(ReluRule::deconvnet)) == deconvnet);
            CHECK(values(backward(ReluRule::standard)) == standard);
            CHECK(values(backward(ReluRule::guided)) == guided);
        }
        CHECK(tape.size() == recorded);
    }
    SUBCASE("two ReLUs in a chain") {
        // z = relu(c * relu(u)) with u = [-1, 1, 2, 3], c = [1, 1, -1, 1]: h = relu(u) =
        // [0, 1, 2, 3], c * h = [0, 1, -2, 3]. Seed dz = [1, -1, 1, 1].
        const Var<double> u = tape.variable(Tensor<double>({4}, {-1, 1, 2, 3}));
        const Var<double> c = tape.constant(Tensor<double>({4}, {1, 1, -1, 1}));
        const Var<double> z = relu(mul(c, relu(u)));
        const Tensor<double> dz({4}, {1, -1, 1, 1});
        auto grad = [&](ReluRule rule) {
            return values(tape.gradient(z, dz, {u}, GradientOptions{.relu = rule})[0]);
        };
        // standard:  d(ch) = dz * [ch > 0] = [0, -1, 0, 1]; dh = c * d(ch) = [0, -1, 0, 1];
        //            du = dh * [u > 0] = [0, -1, 0, 1].
        CHECK(grad(ReluRule::standard) == std::vector<double>{0, -1, 0, 1});
        // guided:    d(ch) = dz * [ch > 0] * [dz > 0] = [0, 0, 0, 1]; dh = [0, 0, 0, 1];
        //            du = dh * [u > 0] * [dh > 0] = [0, 0, 0, 1].
        CHECK(grad(ReluRule::guided) == std::vector<double>{0, 0, 0, 1});
        // deconvnet: d(ch) = max(dz, 0) = [1, 0, 1, 1]; dh = c * d(ch) = [1, 0, -1, 1];
        //            du = max(dh, 0) = [1, 0, 0, 1].
        CHECK(grad(ReluRule::deconvnet) == std::vector<double>{1, 0, 0, 1});
    }
}
