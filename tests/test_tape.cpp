// The tape's contract: gradients for what is asked and nothing more, many backward passes on
// one forward, recording that starts at a named layer, names, and the errors users see.
#include <doctest/doctest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gradcam/explain/grad_cam.hpp"
#include "gradcam/explain/saliency.hpp"
#include "gradcam/models/cifar_resnet.hpp"
#include "gradcam/models/resnet.hpp"
#include "gradcam/models/vgg.hpp"
#include "gradcam/nn/layers.hpp"
#include "gradcam/nn/sequential.hpp"
#include "gradcam/ops/arithmetic.hpp"
#include "gradcam/ops/linear.hpp"
#include "gradcam/ops/pool.hpp"
#include "gradcam/ops/reduce.hpp"
#include "gradcam/ops/relu.hpp"
#include "gradcam/ops/reshape.hpp"
#include "gradcam/random.hpp"
#include "small_nets.hpp"

using namespace gradcam;
using small_nets::check_close;

namespace {

// An identity op that counts how often its backward runs.
Var<double> counted_identity(const Var<double>& x, int& backward_calls) {
    return x.tape().record("counted", x.value(), {x},
                           [&backward_calls](const Node<double>&, const Tensor<double>& dy,
                                             GradientSink<double>& sink) {
                               ++backward_calls;
                               if (!sink.wants(0)) return;
                               Tensor<double>& dx = sink.of(0);
                               for (index_t i = 0; i < dy.size(); ++i) dx[i] += dy[i];
                           });
}

Tensor<double> ramp(Shape shape, double start = 0.5, double step = 0.25) {
    Tensor<double> t(std::move(shape));
    for (index_t i = 0; i < t.size(); ++i) t[i] = start + step * static_cast<double>(i);
    return t;
}

}  // namespace

TEST_CASE("tape: gradients of a small expression, several times on one forward") {
    Tape<double> tape;
    Var<double> a = tape.variable(Tensor<double>(Shape{2}, {1.0, -2.0}));
    Var<double> b = tape.variable(Tensor<double>(Shape{2}, {3.0, 4.0}));
    Var<double> y = sum(mul(a, b) + a);  // y = sum(a*b + a): dy/da = b + 1, dy/db = a
    const std::size_t recorded = tape.size();
    for (int repeat = 0; repeat < 3; ++repeat) {
        auto g = tape.gradient(y, {a, b});
        CHECK(g[0](0) == 4.0);
        CHECK(g[0](1) == 5.0);
        CHECK(g[1](0) == 1.0);
        CHECK(g[1](1) == -2.0);
    }
    CHECK(tape.size() == recorded);  // backward leaves the tape unchanged
    auto only_b = tape.gradient(y, {b});
    CHECK(only_b[0](1) == -2.0);
}

TEST_CASE("tape: a sum hands its gradient to an input without a copy, and every result stays right") {
    // y = a*b + b, loss = sum(r * y), z = y * b: add's second input b takes dy itself when
    // nothing has reached b yet, then mul's backward adds into that same tensor.
    Tape<double> tape;
    Var<double> a = tape.variable(ramp(Shape{2, 3}, 0.5, 0.25));
    Var<double> b = tape.variable(ramp(Shape{2, 3}, -1.0, 0.5));
    const Tensor<double> r = ramp(Shape{2, 3}, 2.0, -0.75);
    Var<double> y = add(mul(a, b), b);
    Var<double> loss = sum(mul(tape.constant(r), y));
    for (int repeat = 0; repeat < 2; ++repeat) {
        // dy = r, da = r b, db = r a + r; with y asked for, dy must not be handed on.
        auto with_y = tape.gradient(loss, {y, a, b});
        auto without_y = tape.gradient(loss, {b, a});
        for (index_t i = 0; i < r.size(); ++i) {
            CHECK(with_y[0][i] == r[i]);
            CHECK(with_y[1][i] == r[i] * b.value()[i]);
            CHECK(with_y[2][i] == r[i] * a.value()[i] + r[i]);
            CHECK(without_y[0][i] == with_y[2][i]);
            CHECK(without_y[1][i] == with_y[1][i]);
        }
    }
    // b reached by a later op first (w = y * b): add must add to b's gradient, not replace it.
    // dloss/db = r y + (r b)(a + 1) from y = a b + b.
    Var<double> w = mul(y, b);
    auto g = tape.gradient(sum(mul(tape.constant(r), w)), {b});
    for (index_t i = 0; i < r.size(); ++i)
        CHECK(g[0][i] == doctest::Approx(r[i] * y.value()[i] +
                                         r[i] * b.value()[i] * (a.value()[i] + 1.0)));
    // relu's backward overwrites dy in place, unless dy is asked for (y = -1.5 .. 4.125).
    Var<double> h = relu(y);
    for (const bool ask_h : {true, false}) {
        auto gh = ask_h ? tape.gradient(sum(mul(tape.constant(r), h)), {h, y})
                        : tape.gradient(sum(mul(tape.constant(r), h)), {y});
        for (index_t i = 0; i < r.size(); ++i) {
            if (ask_h) CHECK(gh[0][i] == r[i]);
            CHECK(gh.back()[i] == (y.value()[i] > 0 ? r[i] : 0.0));
        }
    }
}

TEST_CASE("tape: an explicit seed gives a vector-Jacobian product") {
    Tape<double> tape;
    Var<double> x = tape.variable(Tensor<double>(Shape{3}, {1.0, 2.0, 3.0}));
    Var<double> y = scale(x, 2.0);
    auto g = tape.gradient(y, Tensor<double>(Shape{3}, {1.0, 10.0, 100.0}), {x});
    CHECK(g[0](0) == 2.0);
    CHECK(g[0](2) == 200.0);
}

TEST_CASE("tape: the backward pass never goes below the earliest variable asked for") {
    Tape<double> tape;
    int below = 0, above = 0;
    Var<double> x = tape.variable(ramp(Shape{1, 2, 4, 4}));
    Var<double> lower = counted_identity(relu(x), below);
    Var<double> layer = named(relu(lower), "layer");
    Var<double> y = sum(counted_identity(layer, above));
    tape.gradient(y, {tape.find("layer")});
    CHECK(above == 1);
    CHECK(below == 0);
    tape.gradient(y, {x});
    CHECK(above == 2);
    CHECK(below == 1);
}

TEST_CASE("tape: branches that do not reach the root are not swept") {
    Tape<double> tape;
    int side = 0;
    Var<double> x = tape.variable(ramp(Shape{4}));
    Var<double> unused = counted_identity(x, side);
    Var<double> y = sum(scale(x, 3.0));
    auto g = tape.gradient(y, {x});
    CHECK(side == 0);
    CHECK(g[0](2) == 3.0);
    // A variable the root does not depend on gets a zero gradient.
    Var<double> other = tape.variable(ramp(Shape{2}));
    auto g2 = tape.gradient(y, {other});
    CHECK(g2[0](0) == 0.0);
    CHECK(unused.shape() == Shape{4});
}

TEST_CASE("tape: parameters are constants unless parameter gradients are switched on") {
    nn::Linear<double> fc(3, 2);
    fc.initialise(7);
    Tensor<double> input(Shape{2, 3}, {1, 2, 3, -1, 0.5, 2});
    {
        Tape<double> tape;
        Var<double> x = tape.variable(input);
        Var<double> y = sum(fc(x));
        CHECK(tape.size() == 3);  // x, linear, sum: the weight and bias are not on the tape
        CHECK(tape.parameter_gradients(y).empty());
    }
    Tape<double> tape;
    tape.set_parameters_differentiable(true);
    Var<double> y = sum(fc(tape.constant(input)));
    auto grads = tape.parameter_gradients(y);
    REQUIRE(grads.size() == 2);
    const Tensor<double>& dw = grads.at(&fc.weight());
    CHECK(dw(0, 0) == doctest::Approx(0.0));  // sum over the batch of x: 1 - 1
    CHECK(dw(1, 2) == doctest::Approx(5.0));
    CHECK(grads.at(fc.bias())(1) == doctest::Approx(2.0));

    // A constant referred to without a copy reads the caller's tensor, and is no parameter even
    // when the tape records it (here as the recording start).
    Tape<double> by_reference;
    by_reference.set_parameters_differentiable(true);
    by_reference.record_from("input");
    const Var<double> x = by_reference.constant_reference(input);
    CHECK(x.value().data() == input.data());
    by_reference.name(x, "input");
    CHECK(by_reference.parameter_gradients(sum(fc(by_reference.find("input")))).size() == 2);
}

TEST_CASE("tape: recording from a named layer keeps no backward state below it") {
    nn::Sequential<double> net;
    net.emplace_back<nn::Conv2d<double>>(2, 3, 3, Conv2dOptions{.padding = 1});
    net.emplace_back<nn::ReLU<double>>();
    net.emplace_back<nn::Conv2d<double>>(3, 4, 3, Conv2dOptions{.padding = 1});
    net.emplace_back<nn::ReLU<double>>();
    net.emplace_back<nn::AdaptiveAvgPool2d<double>>(1);
    net.initialise(3);

    Tape<double> full;
    Var<double> y_full = sum(net(full.constant(ramp(Shape{1, 2, 5, 5}))));
    Tape<double> tape;
    tape.record_from("2");
    Var<double> y = sum(net(tape.constant(ramp(Shape{1, 2, 5, 5}))));
    CHECK(tape.size() == 4);  // layer "2" as a variable, then relu, pool, sum
    CHECK(full.size() == 0);  // a constant input and constant parameters: nothing recorded
    CHECK(y.value()[0] == doctest::Approx(y_full.value()[0]));

    auto g = tape.gradient(y, {tape.find("2")});
    CHECK(g[0].shape() == Shape{1, 4, 5, 5});
    CHECK_THROWS_WITH_AS(tape.find("1"),
                         "layer '1' was computed but has been released: it lies before the "
                         "recording start '2'",
                         lookup_error);
    // The first convolution ran inside one op with its ReLU.
    CHECK_THROWS_WITH_AS(tape.find("0"),
                         "layer '0' was computed inside a fused op and not kept; call keep(\"0\") "
                         "before the forward to have it",
                         lookup_error);
}

namespace {

// A VGG-style head over a layer A: max pooling, adaptive pooling, flattening, two linear
// layers with a ReLU between them; the score weighs the outputs.
struct HeadCase {
    index_t images = 2, channels = 4, size = 6;  // A: [images, channels, size, size]
    Size2 pooled{3, 3};                          // the adaptive pooling's output
    bool expect_sums = true;                     // tape.expect_channel_sums("A")
    bool average_pooling = false;                // avg_pool2d (not routing) for max_pool2d
    bool A_read_twice = false;                   // the score also adds sum(A)
};

template <class T>
struct HeadSums {
    std::optional<Tensor<T>> by_blocks;
    Tensor<T> sums, from_gradient;  // gradient_channel_sums; sums of tape.gradient's
};

template <class T>
HeadSums<T> head_channel_sums(const HeadCase& c) {
    Random random(11);
    const auto normal = [&](Shape shape) {
        Tensor<T> t(std::move(shape));
        for (T& v : t) v = static_cast<T>(random.normal());
        return t;
    };
    const index_t features = c.channels * c.pooled.h * c.pooled.w;
    const Tensor<T> a = normal(Shape{c.images, c.channels, c.size, c.size}),
                    w1 = normal(Shape{7, features}), b1 = normal(Shape{7}),
                    w2 = normal(Shape{3, 7}), weigh = normal(Shape{c.images, 3});
    Tape<T> tape;
    if (c.expect_sums) tape.expect_channel_sums("A");
    const Var<T> A = named(tape.variable(a), "A");
    const Var<T> also = c.A_read_twice ? sum(A) : Var<T>();  // read before the pooling reads A
    const Var<T> pooled = c.average_pooling ? avg_pool2d(A) : max_pool2d(A);
    const Var<T> h = relu(linear(flatten(adaptive_avg_pool2d(pooled, c.pooled)), tape.constant(w1),
                                 tape.constant(b1)));
    const Var<T> y = linear(h, tape.constant(w2));
    Var<T> score = sum(mul(y, tape.constant(weigh)));
    if (c.A_read_twice) score = add(score, also);

    HeadSums<T> r;
    r.by_blocks = tape.channel_sums_by_blocks(score, A);
    r.sums = tape.gradient_channel_sums(score, A);
    const Tensor<T> g = tape.gradient(score, {A})[0];
    const index_t plane = c.size * c.size;
    r.from_gradient = Tensor<T>(Shape{c.images, c.channels});
    for (index_t m = 0; m < r.from_gradient.size(); ++m)
        for (index_t i = 0; i < plane; ++i) r.from_gradient[m] += g[m * plane + i];
    return r;
}

}  // namespace

TEST_CASE("tape: channel sums of a layer's gradient through a linear layer's block sums") {
    SUBCASE("pooled to a copy, to 2x2 and 1x1; one image and four; double and float") {
        for (const auto& [size, pooled] : {std::pair{6, Size2{3, 3}}, std::pair{6, Size2{2, 2}},
                                           std::pair{6, Size2{1, 1}}, std::pair{14, Size2{7, 7}}})
            for (const index_t images : {1, 4}) {
                CAPTURE(pooled.h);
                CAPTURE(images);
                const HeadCase c{.images = images, .size = size, .pooled = pooled};
                const HeadSums<double> r = head_channel_sums<double>(c);
                REQUIRE(r.by_blocks.has_value());
                check_close(*r.by_blocks, r.from_gradient, 1e-12, "by block sums");
                check_close(r.sums, r.from_gradient, 1e-12, "gradient_channel_sums");
                const HeadSums<float> f = head_channel_sums<float>(c);
                REQUIRE(f.by_blocks.has_value());
                check_close(*f.by_blocks, f.from_gradient, 1e-5, "float, by block sums");
            }
    }
    SUBCASE("runs of one feature (pooled to 1x1) need nothing prepared: W's columns serve") {
        const HeadSums<double> r =
            head_channel_sums<double>({.pooled = {1, 1}, .expect_sums = false});
        REQUIRE(r.by_blocks.has_value());
        check_close(*r.by_blocks, r.from_gradient, 1e-12, "by W");
    }
    SUBCASE("where it does not apply, the sums come from the whole gradient") {
        for (const HeadCase c : {HeadCase{.expect_sums = false}, HeadCase{.average_pooling = true},
                                 HeadCase{.A_read_twice = true}}) {
            CAPTURE(c.expect_sums);
            CAPTURE(c.images);
            CAPTURE(c.average_pooling);
            CAPTURE(c.A_read_twice);
            const HeadSums<double> r = head_channel_sums<double>(c);
            CHECK_FALSE(r.by_blocks.has_value());
            check_close(r.sums, r.from_gradient, 1e-12, "gradient_channel_sums");
        }
    }
    SUBCASE("the block sums are kept with the weight and made again when it changes") {
        Tensor<double> w = ramp(Shape{3, 8}, -1.0, 0.125);
        const auto sums = [&w] {
            Tape<double> tape;
            tape.expect_channel_sums("A");
            const Var<double> A = named(tape.variable(ramp(Shape{1, 2, 2, 2}, -0.3, 0.1)), "A");
            const Var<double> y = linear(flatten(A), tape.constant_reference(w));
            const Var<double> score = sum(mul(y, tape.constant(ramp(Shape{1, 3}))));
            return tape.channel_sums_by_blocks(score, A).value();
        };
        // Runs of 4: dy R, with R[o, k] the sum of W's row o over positions 4k..4k+3.
        const auto expected = [&w] {
            Tensor<double> s(Shape{1, 2});
            for (index_t o = 0; o < 3; ++o)
                for (index_t k = 0; k < 2; ++k)
                    for (index_t i = 0; i < 4; ++i) s[k] += (0.5 + 0.25 * o) * w[o * 8 + 4 * k + i];
            return s;
        };
        check_close(sums(), expected(), 1e-14, "first use");
        check_close(sums(), expected(), 1e-14, "kept");
        w[5] += 1.0;
        check_close(sums(), expected(), 1e-14, "after W changed");
    }
    SUBCASE("a layer that is not a feature map") {
        Tape<double> tape;
        const Var<double> x = tape.variable(ramp(Shape{2, 3}));
        CHECK_THROWS_WITH_AS(tape.gradient_channel_sums(sum(x), x),
                             "gradient_channel_sums layer must have rank 4 (N, K, h, w), got "
                             "shape [2, 3]",
                             shape_error);
    }
}

TEST_CASE("tape: a value no backward reads is freed with its last Var; kept and held ones stay") {
    // conv2d's backward reads neither its output nor (without weight gradients) its input;
    // relu's reads only its output.
    const Tensor<double> weight = ramp(Shape{2, 1, 3, 3}, -1.0, 0.125);
    const auto forward = [&](Tape<double>& tape, const Var<double>& x, Var<double>* conv_out) {
        Var<double> c = named(conv2d(x, tape.parameter(weight), {.padding = 1}), "conv");
        if (conv_out) *conv_out = c;
        return sum(relu(c));
    };
    const Tensor<double> image = ramp(Shape{1, 1, 4, 4}, -1.0, 0.125);
    Tape<double> tape;
    const Var<double> x = tape.variable(image);
    const Var<double> y = forward(tape, x, nullptr);
    CHECK_THROWS_WITH_AS(tape.find("conv"),
                         doctest::Contains("layer 'conv' was computed but not kept"), lookup_error);
    const Tensor<double> dx = tape.gradient(y, {x})[0];

    // The same, keeping the convolution's output by name, and holding it by a Var.
    Tape<double> keeping;
    keeping.keep("conv");
    const Var<double> kx = keeping.variable(image);
    const Var<double> ky = forward(keeping, kx, nullptr);
    Tape<double> holding;
    const Var<double> hx = holding.variable(image);
    Var<double> held;
    const Var<double> hy = forward(holding, hx, &held);
    check_close(keeping.find("conv").value(), held.value(), 0.0, "kept and held values");
    check_close(keeping.gradient(ky, {kx})[0], dx, 1e-15, "kept");
    check_close(holding.gradient(hy, {hx})[0], dx, 1e-15, "held");
    // Each input pixel's gradient: the weights over the outputs whose convolution is positive.
    Tensor<double> expected(image.shape());
    const Tensor<double>& c = held.value();
    for (index_t o = 0; o < 2; ++o)
        for (index_t i = 0; i < 4; ++i)
            for (index_t j = 0; j < 4; ++j)
                if (c(0, o, i, j) > 0)
                    for (index_t u = 0; u < 3; ++u)
                        for (index_t v = 0; v < 3; ++v) {
                            const index_t r = i + u - 1, s = j + v - 1;
                            if (r >= 0 && r < 4 && s >= 0 && s < 4)
                                expected(0, 0, r, s) += weight(o, 0, u, v);
                        }
    check_close(dx, expected, 1e-15, "input gradient");

    // An op that says its backward does not read its output, and then does, is caught.
    Tape<double> wrong;
    const Var<double> w = wrong.variable(image);
    // The op's result is not held past the expression that uses it, and relu reads only its own.
    const Var<double> total = sum(relu(wrong.record(
        "reads_what_it_said_it_would_not", image, {w},
        [](const Node<double>& self, const Tensor<double>&, GradientSink<double>& sink) {
            sink.of(0)[0] += self.value()[0];
        },
        BackwardReads{.output = false, .inputs = {}})));
    CHECK_THROWS_WITH_AS(wrong.gradient(total, {w}),
                         "the value of reads_what_it_said_it_would_not was freed: its op recorded "
                         "that no backward reads it (BackwardReads)",
                         std::logic_error);
}

namespace {

// Two Bottleneck stages (the second with a strided downsample), a 3x3 stem, batch norms with
// drawn statistics and affine parameters, so that no batch norm is an identity.
struct FusionNet {
    models::ResNet<double> net{models::ResNetConfig{.bottleneck = true,
                                                    .blocks = {1, 2},
                                                    .widths = {4, 8},
                                                    .stem_channels = 8,
                                                    .stem_kernel = 3,
                                                    .stem_stride = 1,
                                                    .classes = 5}};
    Tensor<double> input{Shape{2, 3, 8, 8}};

    FusionNet() {
        net.initialise(5);
        Random random(6);
        for (nn::Module<double>* m : net.modules())
            if (auto* bn = dynamic_cast<nn::BatchNorm2d<double>*>(m)) {
                for (double& v : bn->weight()) v = random.uniform(0.5, 1.5);
                for (double& v : bn->bias()) v = random.normal() * 0.2;
                for (double& v : bn->running_mean()) v = random.normal() * 0.2;
                for (double& v : bn->running_var()) v = random.uniform(0.5, 2.0);
            }
        for (double& v : input) v = random.normal();
    }

    // Every module's path: a tape that keeps them all fuses nothing.
    std::vector<std::string> paths() {
        std::vector<std::string> out;
        for (nn::Module<double>* m : net.modules())
            if (!m->path().empty()) out.push_back(m->path());
        return out;
    }
};

}  // namespace

TEST_CASE("nn: a convolution, its batch norm and ReLU run as one op where nothing needs the values between them") {
    FusionNet f;
    Tape<double> separate;
    for (const std::string& path : f.paths()) separate.keep(path);
    const Var<double> expected = f.net(separate.constant(f.input));

    SUBCASE("inference: the same outputs; the values in between were never handed out") {
        Tape<double> tape;
        const Var<double> y = f.net(tape.constant(f.input));
        CHECK(max_abs_difference(y.value(), expected.value()) <= 1e-13 * max_abs(expected.value()));
        CHECK(tape.names() == separate.names());
        for (const char* name : {"conv1", "bn1", "layer1.0.conv3", "layer1.0.bn3", "layer2.0.downsample.0"})
            CHECK_THROWS_WITH_AS(tape.find(name),
                                 (std::string("layer '") + name +
                                  "' was computed inside a fused op and not kept; call keep(\"" +
                                  name + "\") before the forward to have it")
                                     .c_str(),
                                 lookup_error);
        // Values that were never inside a fused op keep the message they had.
        CHECK_THROWS_WITH_AS(tape.find("maxpool"),
                             "layer 'maxpool' was computed but not kept: nothing on the tape needs "
                             "it; call keep(\"maxpool\") before the forward, or make the input a "
                             "variable",
                             lookup_error);
    }
    SUBCASE("a kept value is not fused away") {
        Tape<double> tape;
        tape.keep("layer2.1.bn2");
        tape.keep("layer2.0.downsample.0");
        const Var<double> y = f.net(tape.constant(f.input));
        CHECK(max_abs_difference(y.value(), expected.value()) <= 1e-13 * max_abs(expected.value()));
        for (const char* name : {"layer2.1.bn2", "layer2.0.downsample.0"})
            CHECK(max_abs_difference(tape.find(name).value(), separate.find(name).value()) == 0);
        // Keeping the batch norm's value runs its convolution unfused too.
        CHECK_THROWS_WITH_AS(tape.find("layer2.1.conv2"),
                             "layer 'layer2.1.conv2' was computed but not kept: nothing on the "
                             "tape needs it; call keep(\"layer2.1.conv2\") before the forward, or "
                             "make the input a variable",
                             lookup_error);
    }
    SUBCASE("recording: no fusion unless the caller allows it, then the same gradients") {
        Tape<double> plain;
        const Var<double> x_plain = plain.variable(f.input);
        const Var<double> y_plain = sum(f.net(x_plain));
        CHECK(plain.find("layer1.0.conv2").value().shape() == Shape{2, 4, 4, 4});

        Tape<double> tape;
        tape.set_fusion_while_recording(true);
        const Var<double> x = tape.variable(f.input);
        const Var<double> y = sum(f.net(x));
        CHECK(tape.size() < plain.size());
        CHECK_THROWS_AS(tape.find("layer1.0.conv2"), lookup_error);
        for (const ReluRule rule : {ReluRule::standard, ReluRule::guided, ReluRule::deconvnet}) {
            const Tensor<double> g = tape.gradient(y, {x}, {.relu = rule})[0];
            const Tensor<double> g_plain = plain.gradient(y_plain, {x_plain}, {.relu = rule})[0];
            CHECK(max_abs_difference(g, g_plain) <= 1e-12 * max_abs(g_plain));
        }
    }
    SUBCASE("recording from a value a fusion would hide starts there, and the gradient is the same") {
        Tape<double> plain;
        const Var<double> y_plain = sum(f.net(plain.variable(f.input)));
        const Tensor<double> expected_gradient =
            plain.gradient(y_plain, {plain.find("layer2.0.bn2")})[0];
        Tape<double> tape;
        tape.record_from("layer2.0.bn2");
        tape.set_fusion_while_recording(true);
        const Var<double> y = sum(f.net(tape.constant(f.input)));
        const Tensor<double> g = tape.gradient(y, {tape.find("layer2.0.bn2")})[0];
        CHECK(max_abs_difference(g, expected_gradient) <= 1e-12 * max_abs(expected_gradient));
    }
    SUBCASE("training and parameter gradients run the layers one by one") {
        Tape<double> tape;
        tape.set_parameters_differentiable(true);
        tape.set_fusion_while_recording(true);
        f.net(tape.constant(f.input));
        CHECK(tape.find("layer1.0.bn1").value().shape() == Shape{2, 4, 4, 4});

        Tape<double> training;
        nn::TrainingMode<double> mode(f.net, true);
        f.net(training.constant(f.input));
        CHECK(training.names() == separate.names());
        CHECK_THROWS_WITH_AS(training.find("layer1.0.conv1"),
                             "layer 'layer1.0.conv1' was computed but not kept: nothing on the tape "
                             "needs it; call keep(\"layer1.0.conv1\") before the forward, or make "
                             "the input a variable",
                             lookup_error);
    }
    SUBCASE("explanations of a module network fuse, and give what they give unfused") {
        // A callable network runs its modules on a recorded tape without fusion.
        auto unfused = [&](const Var<double>& x) { return f.net(x); };
        // A layer inside a fused run: guided_grad_cam keeps it, grad_cam starts recording there.
        for (const char* layer : {"layer1.0.bn2", "layer2.0.conv3", "layer2"}) {
            INFO(layer);
            const GuidedGradCamResult<double> a = guided_grad_cam(f.net, f.input, layer);
            const GuidedGradCamResult<double> b = guided_grad_cam(unfused, f.input, layer);
            CHECK(max_abs_difference(a.map, b.map) <= 1e-12 * max_abs(b.map));
            CHECK(max_abs_difference(a.guided, b.guided) <= 1e-12 * max_abs(b.guided));
            CHECK(max_abs_difference(a.grad_cam.raw, b.grad_cam.raw) <= 1e-12 * max_abs(b.grad_cam.raw));
            const CamResult<double> c = grad_cam(f.net, f.input, layer);
            CHECK(max_abs_difference(c.raw, b.grad_cam.raw) <= 1e-12 * max_abs(b.grad_cam.raw));
        }
    }
    SUBCASE("a batch norm that would fail runs unfused and names itself") {
        f.net.module("bn1").tensor("running_var")[1] = -2.0;
        Tape<double> tape;
        try {
            f.net(tape.constant(f.input));
            FAIL("no error for a negative running_var");
        } catch (const argument_error& e) {
            CHECK(std::string(e.what()).starts_with("layer 'bn1': batch_norm2d: running_var[1] + eps = "));
        }
    }
    SUBCASE("an error in a fused convolution names the layer") {
        Tape<double> tape;
        CHECK_THROWS_WITH_AS(f.net(tape.constant(Tensor<double>(Shape{1, 4, 8, 8}))),
                             "layer 'conv1': conv2d: input [1, 4, 8, 8] and weight [8, 3, 3, 3] do "
                             "not fit with 1 group(s): need input channels = weight.size(1) * "
                             "groups and out_channels divisible by groups",
                             shape_error);
    }
}

namespace {

// The network's output on a tape that keeps every module's value, which fuses nothing.
template <class Net>
Var<double> run_keeping_all(Net& net, Tape<double>& tape, const Tensor<double>& input) {
    for (nn::Module<double>* m : net.modules())
        if (!m->path().empty()) tape.keep(m->path());
    return net(tape.constant(input));
}

// A module network recorded as it is and with fusion (as explanations run it): `fused_away`
// fewer ops, and the same input gradient under every ReLU rule.
template <class Net>
void check_recording_fused(Net& net, const Tensor<double>& input, std::size_t fused_away) {
    Tape<double> plain;
    const Var<double> x_plain = plain.variable(input);
    const Var<double> y_plain = sum(net(x_plain));
    Tape<double> tape;
    tape.set_fusion_while_recording(true);
    const Var<double> x = tape.variable(input);
    const Var<double> y = sum(net(x));
    CHECK(tape.size() + fused_away == plain.size());
    for (const ReluRule rule : {ReluRule::standard, ReluRule::guided, ReluRule::deconvnet}) {
        const Tensor<double> g = tape.gradient(y, {x}, {.relu = rule})[0];
        const Tensor<double> g_plain = plain.gradient(y_plain, {x_plain}, {.relu = rule})[0];
        CHECK(max_abs_difference(g, g_plain) <= 1e-12 * max_abs(g_plain));
    }
}

// Guided Grad-CAM and Grad-CAM at `layer` of a module network (fused) against the same network
// run as a callable, which runs its modules one by one.
template <class Net>
void check_maps_as_unfused(Net& net, const Tensor<double>& input, const char* layer) {
    INFO(layer);
    auto unfused = [&](const Var<double>& x) { return net(x); };
    const GuidedGradCamResult<double> a = guided_grad_cam(net, input, layer);
    const GuidedGradCamResult<double> b = guided_grad_cam(unfused, input, layer);
    CHECK(max_abs_difference(a.map, b.map) <= 1e-12 * max_abs(b.map));
    CHECK(max_abs_difference(a.guided, b.guided) <= 1e-12 * max_abs(b.guided));
    CHECK(max_abs_difference(a.grad_cam.raw, b.grad_cam.raw) <= 1e-12 * max_abs(b.grad_cam.raw));
    const CamResult<double> c = grad_cam(net, input, layer);
    CHECK(max_abs_difference(c.raw, b.grad_cam.raw) <= 1e-12 * max_abs(b.grad_cam.raw));
}

}  // namespace

TEST_CASE(
    "nn: a VGG's convolutions and their ReLUs run as one op where nothing needs the convolution's "
    "value") {
    // features: 0 conv, 1 relu, 2 max pool, 3 conv, 4 relu, 5 conv, 6 relu, 7 max pool.
    models::Vgg<double> net{models::VggConfig{
        .layers = {4, 0, 6, 6, 0}, .pooled_size = 2, .hidden = {8}, .dropout = 0.0, .classes = 3}};
    net.initialise(3);
    nn::TrainingMode<double> inference(net, false);
    Random random(4);
    Tensor<double> input(Shape{2, 3, 8, 8});
    for (double& v : input) v = random.normal();
    Tape<double> separate;
    const Var<double> expected = run_keeping_all(net, separate, input);

    SUBCASE("inference: the same outputs and names; a kept convolution runs unfused") {
        Tape<double> tape;
        const Var<double> y = net(tape.constant(input));
        CHECK(max_abs_difference(y.value(), expected.value()) == 0);
        CHECK(tape.names() == separate.names());
        CHECK_THROWS_WITH_AS(tape.find("features.3"),
                             "layer 'features.3' was computed inside a fused op and not kept; call "
                             "keep(\"features.3\") before the forward to have it",
                             lookup_error);
        Tape<double> keeping;
        keeping.keep("features.5");
        net(keeping.constant(input));
        CHECK(max_abs_difference(keeping.find("features.5").value(),
                                 separate.find("features.5").value()) == 0);
    }
    SUBCASE("recording: fewer ops, the same gradients under every rule") {
        check_recording_fused(net, input, 3);
    }
    SUBCASE("explanations: the maps of the layers run one by one, at a ReLU and at a convolution") {
        for (const char* layer : {"features.4", "features.3", "features.6"})
            check_maps_as_unfused(net, input, layer);
    }
}

TEST_CASE(
    "nn: a CIFAR ResNet's convolutions, batch norms, shortcuts and ReLUs run as one op each") {
    models::CifarResNet<double> net(8);  // a stem and one block per stage, the later two strided
    net.initialise(5);
    Random random(6);
    for (nn::Module<double>* m : net.modules())
        if (auto* bn = dynamic_cast<nn::BatchNorm2d<double>*>(m)) {
            for (double& v : bn->running_mean()) v = random.normal() * 0.2;
            for (double& v : bn->running_var()) v = random.uniform(0.5, 2.0);
        }
    Tensor<double> input(Shape{2, 3, 8, 8});
    for (double& v : input) v = random.normal();
    Tape<double> separate;
    const Var<double> expected = run_keeping_all(net, separate, input);
    Tape<double> tape;
    CHECK(max_abs_difference(net(tape.constant(input)).value(), expected.value()) == 0);

    check_recording_fused(net, input, 7 * 2 + 3);  // 7 convolutions, 3 residual adds
    Tape<double> fused;
    fused.set_fusion_while_recording(true);
    net(fused.variable(input));
    CHECK_THROWS_AS(fused.find("layer2.0.bn2"), lookup_error);
    for (const char* layer : {"layer3", "layer2.0.bn2"}) check_maps_as_unfused(net, input, layer);
}

namespace {

// A convolution and batch norm with an unregistered ReLU (no path) and an optional residual.
struct ConvBatchNorm : nn::Module<double> {
    nn::Conv2d<double>& conv = submodule<nn::Conv2d<double>>("conv", 2, 3, 3, Conv2dOptions{.padding = 1});
    nn::BatchNorm2d<double>& bn = submodule<nn::BatchNorm2d<double>>("bn", 3);
    nn::ReLU<double> loose;
    std::function<Var<double>()> residual;

    Var<double> forward(const Var<double>& x) override {
        if (residual) return nn::conv_batch_norm(conv, bn, x, &loose, residual);
        return nn::conv_batch_norm(conv, bn, x, &loose);
    }
};

// A convolution whose forward is not Conv2d's: it doubles its output.
struct DoubledConv : nn::Conv2d<double> {
    using nn::Conv2d<double>::Conv2d;

  protected:
    Var<double> forward(const Var<double>& x) override {
        return scale(nn::Conv2d<double>::forward(x), 2.0);
    }
};

}  // namespace

TEST_CASE("nn: what conv_batch_norm does not fuse, and its errors") {
    const Tensor<double> x = ramp(Shape{1, 2, 4, 4}, -1.0, 0.125);
    SUBCASE("a ReLU without a path: the batch norm's name stays on the batch norm's value") {
        ConvBatchNorm net;
        net.initialise(8);
        Tape<double> fused, separate;
        separate.keep("bn");
        const Var<double> y = net(fused.constant(x)), expected = net(separate.constant(x));
        CHECK(max_abs_difference(y.value(), expected.value()) <= 1e-14 * max_abs(expected.value()));
        // The ReLU cut some values: the batch norm's differ from the output.
        CHECK(max_abs_difference(separate.find("bn").value(), expected.value()) > 0.1);
        CHECK_THROWS_WITH_AS(fused.find("bn"),
                             "layer 'bn' was computed inside a fused op and not kept; call "
                             "keep(\"bn\") before the forward to have it",
                             lookup_error);
    }
    SUBCASE("a residual of the wrong shape is refused by the add, as unfused") {
        ConvBatchNorm net;
        Tape<double> tape;
        net.residual = [&] { return tape.constant(Tensor<double>(Shape{1, 3, 2, 2})); };
        CHECK_THROWS_WITH_AS(net(tape.constant(x)), "add: operand shapes differ: [1, 3, 4, 4] vs [1, 3, 2, 2]",
                             shape_error);
        net.residual = [] { return Var<double>(); };
        CHECK_THROWS_WITH_AS(net(tape.constant(x)), "conv_batch_norm: the residual is an empty Var",
                             argument_error);
    }
    SUBCASE("a subclass of a layer runs its own forward; the plain layers after it fuse") {
        nn::Sequential<double> net;
        net.push_back(std::make_shared<DoubledConv>(2, 3, 3, Conv2dOptions{.padding = 1}));
        net.emplace_back<nn::BatchNorm2d<double>>(3);
        net.emplace_back<nn::ReLU<double>>();
        net.emplace_back<nn::Conv2d<double>>(3, 4, 1);
        net.emplace_back<nn::BatchNorm2d<double>>(4);
        net.emplace_back<nn::ReLU<double>>();
        net.initialise(9);
        Tape<double> fused, separate;
        fused.keep("2");
        for (const char* name : {"0", "1", "2", "3", "4", "5"}) separate.keep(name);
        const Var<double> y = net(fused.constant(x)), expected = net(separate.constant(x));
        CHECK(max_abs_difference(y.value(), expected.value()) <= 1e-14 * max_abs(expected.value()));
        const Tensor<double> doubled_block = separate.find("2").value();
        REQUIRE(max_abs(doubled_block) > 0.1);
        CHECK(max_abs_difference(fused.find("2").value(), doubled_block) <= 1e-14 * max_abs(doubled_block));
        CHECK(fused.names() == separate.names());
        CHECK_THROWS_WITH_AS(fused.find("1"),
                             "layer '1' was computed but not kept: nothing on the tape needs it; "
                             "call keep(\"1\") before the forward, or make the input a variable",
                             lookup_error);
        CHECK_THROWS_WITH_AS(fused.find("4"),
                             "layer '4' was computed inside a fused op and not kept; call "
                             "keep(\"4\") before the forward to have it",
                             lookup_error);
    }
}

TEST_CASE("tape: names, latest value wins, unknown names list the known ones") {
    Tape<float> tape;
    Var<float> x = tape.variable(Tensor<float>(Shape{2}, 1.0f));
    Var<float> a = named(scale(x, 2.0f), "block");
    Var<float> b = named(scale(a, 3.0f), "block");
    named(b, "alias");
    CHECK(tape.find("block") == b);
    CHECK(tape.find("alias") == b);
    CHECK(b.node().names().size() == 2);
    CHECK(tape.names() == std::vector<std::string>{"block", "alias"});
    CHECK_THROWS_WITH_AS(tape.find("blok"),
                         "no layer named 'blok' was computed; known names: block, alias",
                         lookup_error);
}

TEST_CASE("tape: errors users see") {
    Tape<float> tape, other;
    Var<float> x = tape.variable(Tensor<float>(Shape{2, 3}));
    Var<float> c = tape.constant(Tensor<float>(Shape{2, 3}));
    Var<float> y = scale(x, 2.0f);
    CHECK_THROWS_WITH_AS(tape.gradient(y, {x}),
                         "gradient: the root scale has shape [2, 3]; reduce it to a scalar (sum, "
                         "select) or pass a seed of that shape",
                         shape_error);
    CHECK_THROWS_WITH_AS(tape.gradient(y, Tensor<float>(Shape{3}), {x}),
                         "gradient: seed has shape [3] but the root has shape [2, 3]", shape_error);
    CHECK_THROWS_WITH_AS(tape.gradient(sum(y), {c}),
                         "gradient: wrt[0] (constant) is not differentiable: make it with "
                         "Tape::variable, or start recording at or before it",
                         argument_error);
    Var<float> foreign = other.variable(Tensor<float>(Shape{2, 3}));
    CHECK_THROWS_WITH_AS(add(x, foreign), "add: variable belongs to another tape", argument_error);
    CHECK_THROWS_WITH_AS(add(x, tape.constant(Tensor<float>(Shape{3, 2}))),
                         "add: operand shapes differ: [2, 3] vs [3, 2]", shape_error);
}

TEST_CASE("nn: module paths, state_dict keys and lookups") {
    struct Block : nn::Module<float> {
        nn::Conv2d<float>& conv1 =
            submodule<nn::Conv2d<float>>("conv1", 4, 4, 3, Conv2dOptions{.padding = 1}, false);
        nn::BatchNorm2d<float>& bn1 = submodule<nn::BatchNorm2d<float>>("bn1", 4);
        nn::ReLU<float>& relu = submodule<nn::ReLU<float>>("relu");
        Var<float> forward(const Var<float>& x) override { return relu(add(bn1(conv1(x)), x)); }
    };
    struct Net : nn::Module<float> {
        nn::Conv2d<float>& stem = submodule<nn::Conv2d<float>>("conv1", 3, 4, 3);
        nn::Sequential<float>& layer1 = submodule<nn::Sequential<float>>("layer1");
        Net() {
            layer1.emplace_back<Block>();
            layer1.emplace_back<Block>();
        }
        Var<float> forward(const Var<float>& x) override { return layer1(stem(x)); }
    };
    Net net;
    std::vector<std::string> keys;
    for (auto& [key, tensor] : net.state()) keys.push_back(key);
    CHECK(keys == std::vector<std::string>{
                      "conv1.weight", "conv1.bias", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
                      "layer1.0.bn1.bias", "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var",
                      "layer1.0.bn1.num_batches_tracked", "layer1.1.conv1.weight",
                      "layer1.1.bn1.weight", "layer1.1.bn1.bias", "layer1.1.bn1.running_mean",
                      "layer1.1.bn1.running_var", "layer1.1.bn1.num_batches_tracked"});
    CHECK(net.parameters().size() == 8);
    CHECK(net.module("layer1.1.bn1").path() == "layer1.1.bn1");
    CHECK(net.module("layer1").state().front().first == "0.conv1.weight");
    CHECK(&net.tensor("layer1.1.conv1.weight") == &net.module("layer1.1").tensor("conv1.weight"));
    CHECK_THROWS_WITH_AS(
        net.tensor("fc.weight"),
        doctest::Contains("no parameter or buffer 'fc.weight' in the network; known keys: "
                          "conv1.weight, conv1.bias, layer1.0.conv1.weight"),
        lookup_error);
    CHECK_THROWS_WITH_AS(
        net.module("layer2"),
        doctest::Contains(
            "no module named 'layer2'; known modules: conv1, layer1, layer1.0, layer1.0.conv1"),
        lookup_error);

    net.initialise(1);
    Tape<float> tape;
    tape.keep("layer1");
    tape.keep("layer1.1");
    net(tape.constant(Tensor<float>(Shape{1, 3, 6, 6})));
    for (const char* name :
         {"conv1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0", "layer1.1.relu", "layer1"})
        CHECK(tape.contains(name));
    CHECK(tape.find("layer1") == tape.find("layer1.1"));  // a Sequential's output: its last child's
    // Nothing was recorded (constant input and parameters), so values not kept are released.
    CHECK_THROWS_WITH_AS(
        tape.find("layer1.0.conv1"),
        "layer 'layer1.0.conv1' was computed but not kept: nothing on the tape needs "
        "it; call keep(\"layer1.0.conv1\") before the forward, or make the input a "
        "variable",
        lookup_error);
    CHECK_THROWS_WITH_AS(net(tape.constant(Tensor<float>(Shape{1, 2, 6, 6}))),
                         "layer 'conv1': conv2d: input [1, 2, 6, 6] and weight [4, 3, 3, 3] do not "
                         "fit with 1 group(s): need input channels = weight.size(1) * groups and "
                         "out_channels divisible by groups",
                         shape_error);
}
