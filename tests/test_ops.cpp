// Forward values of every op against PyTorch (tests/data/ops.safetensors, made by
// scripts/make_goldens.py), in float and in double. Each case's configuration is read from the
// file's metadata, so the script is the one place that states it.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <nlohmann/json.hpp>

#include "small_nets.hpp"

using namespace gradcam;
using small_nets::check_close;

namespace {

Size2 size2(const nlohmann::json& value) {
    if (value.is_array()) return Size2(value[0].get<index_t>(), value[1].get<index_t>());
    return Size2(value.get<index_t>());
}

// Runs the op that `config` describes on the case's stored inputs.
template <class T>
Tensor<T> run_case(const io::SafetensorsFile& file, const std::string& name,
                   const nlohmann::json& config) {
    auto input = [&](const char* suffix) { return file.read<T>(name + suffix); };
    auto maybe = [&](Tape<T>& tape, const char* suffix) {
        return file.contains(name + suffix) ? tape.constant(input(suffix)) : Var<T>();
    };
    Tape<T> tape;
    const Var<T> x = tape.constant(input(".x"));
    const std::string op = config.at("op");
    if (op == "conv2d")
        return conv2d(x, tape.constant(input(".w")), maybe(tape, ".b"),
                      {.stride = size2(config["stride"]),
                       .padding = size2(config["padding"]),
                       .dilation = size2(config["dilation"]),
                       .groups = config["groups"].get<index_t>()})
            .value();
    if (op == "max_pool2d" || op == "avg_pool2d") {
        const Pool2dOptions options{.kernel = size2(config["kernel_size"]),
                                    .stride = size2(config["stride"]),
                                    .padding = size2(config["padding"]),
                                    .dilation = size2(config.value("dilation", nlohmann::json(1))),
                                    .ceil_mode = config["ceil_mode"].get<bool>(),
                                    .count_include_pad = config.value("count_include_pad", true)};
        return (op == "max_pool2d" ? max_pool2d(x, options) : avg_pool2d(x, options)).value();
    }
    if (op == "adaptive_avg_pool2d")
        return adaptive_avg_pool2d(x, size2(config["output_size"])).value();
    if (op == "linear") return linear(x, tape.constant(input(".w")), maybe(tape, ".b")).value();
    if (op == "batch_norm")
        return batch_norm2d(x, maybe(tape, ".w"), maybe(tape, ".b"), input(".mean"), input(".var"),
                            config["eps"].get<T>())
            .value();
    if (op == "softmax") return softmax(x, config["dim"].get<index_t>()).value();
    if (op == "log_softmax") return log_softmax(x, config["dim"].get<index_t>()).value();
    if (op == "interpolate") {
        const Size2 size = size2(config["size"]);
        return resize_bilinear(x.value(), size.h, size.w);
    }
    FAIL("unknown op in ops.safetensors: ", op);
    return {};
}

template <class T>
void check_every_case(double tolerance) {
    const io::SafetensorsFile file(small_nets::data_file("ops.safetensors"));
    int cases = 0;
    for (const auto& [name, text] : file.metadata()) {
        if (!file.contains(name + ".y")) continue;  // metadata that is not a case
        const nlohmann::json config = nlohmann::json::parse(text);
        CAPTURE(text);
        check_close(run_case<T>(file, name, config), file.read<T>(name + ".y"), tolerance, name);
        ++cases;
    }
    CHECK(cases == 24);
}

}  // namespace

TEST_CASE("ops: forward values match PyTorch in float") { check_every_case<float>(2e-6); }

TEST_CASE("ops: forward values match PyTorch in double") {
    // The references are float32, so double agrees to float precision.
    check_every_case<double>(2e-6);
}

// conv2d(x, w) + bias from its definition in double, and the input gradient of sum(r * y):
// each term w[k, c, a, b] x[n, c, ih, iw] of y[n, k, i, j] adds w[k, c, a, b] r[n, k, i, j]
// to dx[n, c, ih, iw].
struct DirectConv {
    Tensor<double> y, dx;
};
DirectConv direct_conv2d(const Tensor<double>& x, const Tensor<double>& w, const Tensor<double>* bias,
                         const Tensor<double>& r, const Conv2dOptions& o) {
    DirectConv out{Tensor<double>(r.shape()), Tensor<double>(x.shape())};
    const index_t N = x.dim(0), H = x.dim(2), W = x.dim(3);
    const index_t K = w.dim(0), group_in = w.dim(1), kh = w.dim(2), kw = w.dim(3);
    const index_t out_h = r.dim(2), out_w = r.dim(3);
    for (index_t n = 0; n < N; ++n)
        for (index_t k = 0; k < K; ++k)
            for (index_t i = 0; i < out_h; ++i)
                for (index_t j = 0; j < out_w; ++j) {
                    double sum = bias ? (*bias)[k] : 0.0;
                    for (index_t c = 0; c < group_in; ++c)
                        for (index_t a = 0; a < kh; ++a)
                            for (index_t b = 0; b < kw; ++b) {
                                const index_t ih = i * o.stride.h - o.padding.h + a * o.dilation.h;
                                const index_t iw = j * o.stride.w - o.padding.w + b * o.dilation.w;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                const index_t channel = k / (K / o.groups) * group_in + c;
                                sum += w(k, c, a, b) * x(n, channel, ih, iw);
                                out.dx(n, channel, ih, iw) += w(k, c, a, b) * r(n, k, i, j);
                            }
                    out.y(n, k, i, j) = sum;
                }
    return out;
}

TEST_CASE("ops: conv2d by Winograd F(4x4, 3x3), untransposed, equals the direct sum, forward and backward") {
    Random random(78);
    // More than winograd_transposed_max_tiles tiles of 4x4 outputs, for the untransposed products;
    // the last, 30 wide, in rows of 8 tiles (the input transform sixteen channels at a time) and
    // two blocks of tile rows.
    for (const auto& [h, w, pad] : {std::tuple<index_t, index_t, Size2>{66, 70, 1}, {67, 63, 1},
                                    {70, 69, 0}, {65, 71, {2, 1}}, {63, 61, 3}, {402, 30, 1}}) {
        INFO("input " << h << "x" << w << ", padding " << pad.h << "x" << pad.w);
        Tensor<double> x(Shape{1, 20, h, w}), kernels(Shape{24, 20, 3, 3});
        for (double& v : x) v = random.normal();
        for (double& v : kernels) v = random.normal();
        const detail::ConvGeometry g =
            detail::conv_geometry(x.shape(), kernels.shape(), nullptr, {.padding = pad});
        REQUIRE(detail::winograd_applies(g, 24));
        REQUIRE(!detail::winograd_transposed_applies<double>(g, 24));
        if (w == 30) {
            REQUIRE(detail::winograd_tiles_w<detail::WinogradF4>(g) == 8);
            REQUIRE(detail::winograd_tile_rows<detail::WinogradF4>(g, 24) <
                    detail::winograd_tiles_h<detail::WinogradF4>(g));
        }
        Tape<double> tape;
        const Var<double> xv = tape.variable(x);
        const Var<double> y = conv2d(xv, tape.constant(kernels), {.padding = pad});
        // The input gradient of L = sum(r * y) goes by Winograd too, as a convolution of r padded
        // by 2 - p (negative: a crop, for p = 3, where it goes through col2im instead).
        Tensor<double> r(y.shape());
        for (double& v : r) v = random.normal();
        const DirectConv expected = direct_conv2d(x, kernels, nullptr, r, {.padding = pad});
        check_close(y.value(), expected.y, 1e-12, "double");
        check_close(tape.gradient(sum(mul(tape.constant(r), y)), {xv})[0], expected.dx, 1e-12,
                    "input gradient");
        Tape<float> float_tape;
        check_close(conv2d(float_tape.constant(x.cast<float>()),
                           float_tape.constant(kernels.cast<float>()), {.padding = pad})
                        .value()
                        .cast<double>(),
                    expected.y, 2e-5, "float");
    }
}

TEST_CASE("ops: conv2d's five lowerings equal the direct sum, forward and back, and follow changes to the weights") {
    Random random(91);
    // The product transposed with the weights packed once, the product as it is, Winograd's
    // F(4x4, 3x3), and Winograd's with its products transposed and its kernels packed once, in
    // either form (F(2x2, 3x3) on small outputs).
    enum class Lowering { pixel_major, channel_major, winograd, winograd_transposed_f2, winograd_transposed_f4 };
    struct Case {
        Shape x, w;
        Conv2dOptions options;
        Lowering lowering;
    };
    const std::vector<Case> cases = {
        {Shape{1, 12, 7, 7}, Shape{70, 12, 3, 3}, {.padding = 1}, Lowering::pixel_major},
        {Shape{2, 16, 9, 11}, Shape{40, 8, 3, 3}, {.stride = 2, .padding = 1, .groups = 2}, Lowering::pixel_major},
        {Shape{2, 64, 6, 5}, Shape{36, 64, 1, 1}, {}, Lowering::pixel_major},
        {Shape{1, 32, 13, 12}, Shape{10, 32, 1, 1}, {.stride = 2}, Lowering::pixel_major},
        // Enough pixels (132) that the threads split the product by rows of pixels.
        {Shape{1, 80, 12, 11}, Shape{40, 80, 1, 1}, {}, Lowering::pixel_major},
        // An im2col buffer of over 2^21 values: two tiles of output rows (30, then 2).
        {Shape{1, 240, 64, 64}, Shape{16, 240, 3, 3}, {.stride = 2, .padding = 1}, Lowering::pixel_major},
        {Shape{1, 4, 20, 23}, Shape{10, 2, 3, 2}, {.padding = {1, 2}, .dilation = 2, .groups = 2}, Lowering::channel_major},
        {Shape{2, 3, 40, 36}, Shape{20, 3, 5, 5}, {.stride = 2, .padding = 2}, Lowering::channel_major},
        // As ResNet's stem: 7 columns at stride 2 (each input row split into its even and odd
        // columns), an odd padding and an odd width.
        {Shape{2, 3, 41, 37}, Shape{8, 3, 7, 7}, {.stride = 2, .padding = 3}, Lowering::channel_major},
        // One image: the input gradient by four bands of output rows on threads, the even
        // bands, then the odd ones, which add into input rows the even ones added into too.
        {Shape{1, 3, 75, 69}, Shape{8, 3, 7, 7}, {.stride = 2, .padding = 3}, Lowering::channel_major},
        {Shape{1, 3, 64, 50}, Shape{6, 3, 5, 5}, {.stride = 2, .padding = 2}, Lowering::channel_major},
        {Shape{1, 2, 40, 40}, Shape{3, 2, 5, 5}, {.padding = 4, .dilation = 2}, Lowering::channel_major},
        {Shape{1, 8, 33, 33}, Shape{12, 8, 1, 1}, {}, Lowering::channel_major},
        {Shape{1, 16, 66, 67}, Shape{20, 16, 3, 3}, {.padding = 1}, Lowering::winograd},
        // 81 tiles of 4x4 outputs, then 56 (and 64 for the input gradient).
        {Shape{1, 16, 34, 34}, Shape{20, 16, 3, 3}, {.padding = 1}, Lowering::winograd_transposed_f4},
        {Shape{2, 20, 29, 31}, Shape{18, 20, 3, 3}, {}, Lowering::winograd_transposed_f4},
        // 256 tiles, the most the transposed products take; the input gradient's convolution
        // (66x66, 289 tiles) then runs untransposed.
        {Shape{1, 16, 66, 66}, Shape{16, 16, 3, 3}, {}, Lowering::winograd_transposed_f4},
        // 16 tiles (8-row register tiles), then 25 for the input gradient and 36 (7-row ones).
        {Shape{1, 24, 7, 7}, Shape{70, 24, 3, 3}, {.padding = 1}, Lowering::winograd_transposed_f2},
        {Shape{2, 20, 10, 9}, Shape{33, 20, 3, 3}, {}, Lowering::winograd_transposed_f2},
        {Shape{1, 16, 9, 12}, Shape{16, 16, 3, 3}, {.padding = {2, 1}}, Lowering::winograd_transposed_f2},
        // Up to 16 tiles the input gradient reads the forward's kernels (GemmKernel's
        // multiply_packed_on_left). In the first case above: 16 and 8 rows (C = 24) from a panel
        // and a part panel (K = 70), 16 tiles (two vectors of doubles, one of floats). Here 9
        // tiles (part of a vector), and 272 rows, past one block of 256.
        {Shape{1, 20, 5, 6}, Shape{40, 20, 3, 3}, {.padding = 1}, Lowering::winograd_transposed_f2},
        {Shape{2, 272, 4, 4}, Shape{17, 272, 3, 3}, {.padding = 1}, Lowering::winograd_transposed_f2},
    };
    for (const Case& c : cases) {
        INFO("input " << c.x << ", weight " << c.w);
        Tensor<double> x(c.x), w(c.w), bias(Shape{c.w[0]});
        for (double& v : x) v = random.normal();
        for (double& v : w) v = random.normal();
        for (double& v : bias) v = random.normal();
        const detail::ConvGeometry g = detail::conv_geometry(x.shape(), w.shape(), nullptr, c.options);
        const bool winograd_transposed = c.options.groups == 1 &&
                                         detail::winograd_transposed_applies<double>(g, c.w[0]);
        REQUIRE(winograd_transposed == (c.lowering == Lowering::winograd_transposed_f2 ||
                                        c.lowering == Lowering::winograd_transposed_f4));
        if (winograd_transposed)
            REQUIRE(detail::winograd_transposed_fits<detail::WinogradF4>(g, c.w[0]) ==
                    (c.lowering == Lowering::winograd_transposed_f4));
        const bool winograd = !winograd_transposed && detail::winograd_applies(g, c.w[0]);
        REQUIRE(winograd == (c.lowering == Lowering::winograd));
        if (!winograd && !winograd_transposed)
            REQUIRE(detail::pixel_major_applies<double>(g) == (c.lowering == Lowering::pixel_major));
        Tensor<float> wf = w.cast<float>();
        // The weights go in as a module's parameters do, by reference, so that their packed
        // copy is kept between calls and must follow each change.
        for (int change = 0; change < 3; ++change) {
            Tape<double> tape;
            const Var<double> xv = tape.variable(x);
            const Var<double> y = conv2d(xv, tape.parameter(w), tape.constant(bias), c.options);
            Tensor<double> r(y.shape());
            for (double& v : r) v = random.normal();
            const DirectConv expected = direct_conv2d(x, w, &bias, r, c.options);
            check_close(y.value(), expected.y, 1e-12, "double");
            check_close(tape.gradient(sum(mul(tape.constant(r), y)), {xv})[0], expected.dx, 1e-12,
                        "input gradient");
            Tape<float> float_tape;
            const Var<float> xf = float_tape.variable(x.cast<float>());
            const Var<float> yf = conv2d(xf, float_tape.parameter(wf),
                                         float_tape.constant(bias.cast<float>()), c.options);
            check_close(yf.value().cast<double>(), expected.y, 2e-5, "float");
            check_close(float_tape
                            .gradient(sum(mul(float_tape.constant(r.cast<float>()), yf)), {xf})[0]
                            .cast<double>(),
                        expected.dx, 2e-5, "float input gradient");
            if (change == 0) {
                w[3] += 1.0;
                wf[3] += 1.0f;
            } else {
                double* wd = w.data();
                float* wfd = wf.data();
                for (index_t i = 0; i < w.size(); i += 5) wfd[i] = static_cast<float>(wd[i] *= -0.5);
            }
        }
    }
}

TEST_CASE("ops: a strided 1x1 convolution's input gradient is assigned or added, by either lowering") {
    // Every input value is read by one output at most: the input gradient is written in one
    // pass, zeros between the strided pixels, or added where an earlier backward wrote first.
    Random random(97);
    struct Case {
        Shape x, w;
        Size2 stride;
        bool pixel_major;
    };
    for (const Case& c : {Case{Shape{1, 8, 30, 29}, Shape{4, 8, 1, 1}, 2, false},
                          Case{Shape{2, 6, 16, 15}, Shape{5, 6, 1, 1}, {3, 2}, false},
                          Case{Shape{1, 40, 9, 10}, Shape{12, 40, 1, 1}, 2, true}}) {
        CAPTURE(c.x);
        const Conv2dOptions options{.stride = c.stride};
        const detail::ConvGeometry g = detail::conv_geometry(c.x, c.w, nullptr, options);
        REQUIRE(g.is_strided_pointwise());
        REQUIRE(detail::pixel_major_applies<double>(g) == c.pixel_major);
        Tensor<double> x(c.x), w(c.w), q(c.x);
        for (double& v : x) v = random.normal();
        for (double& v : w) v = random.normal();
        for (double& v : q) v = random.normal();
        for (const bool after_another : {false, true}) {
            CAPTURE(after_another);
            Tape<double> tape;
            const Var<double> xv = tape.variable(x);
            const Var<double> y = conv2d(xv, tape.parameter(w), options);
            Tensor<double> r(y.shape());
            for (double& v : r) v = random.normal();
            Var<double> loss = sum(mul(tape.constant(r), y));
            // Recorded after the convolution, so its backward writes x's gradient first.
            if (after_another) loss = loss + sum(mul(tape.constant(q), xv));
            Tensor<double> expected = direct_conv2d(x, w, nullptr, r, options).dx;
            if (after_another)
                for (index_t i = 0; i < expected.size(); ++i) expected[i] += q[i];
            check_close(tape.gradient(loss, {xv})[0], expected, 1e-12, "input gradient");
        }
    }
}

TEST_CASE(
    "ops: conv2d_batch_norm and conv2d_relu equal conv2d, batch_norm2d, add and relu one after "
    "another, under every ReLU rule") {
    Random random(83);
    struct Case {
        const char* what;
        Shape x, w;
        Conv2dOptions options;
    };
    // Every lowering, each applying the fused tail as it writes: the transposed product (direct,
    // strided, grouped), the product as it is (pointwise, and through im2col), and Winograd's
    // untransposed and transposed, in both forms.
    for (const Case& c : {Case{"3x3 direct", {2, 5, 9, 8}, {7, 5, 3, 3}, {.padding = 1}},
                          Case{"1x1", {2, 8, 6, 6}, {12, 8, 1, 1}, {}},
                          Case{"3x3 stride 2", {1, 6, 11, 11}, {8, 6, 3, 3}, {.stride = 2, .padding = 1}},
                          Case{"3x3 groups 2", {2, 6, 7, 6}, {8, 3, 3, 3}, {.padding = 1, .groups = 2}},
                          Case{"3x3 by im2col as it is", {2, 3, 20, 21}, {8, 3, 3, 3}, {.padding = 1}},
                          Case{"Winograd", {2, 16, 66, 67}, {20, 16, 3, 3}, {.padding = 1}},
                          Case{"Winograd transposed F(4x4)", {2, 16, 28, 30}, {24, 16, 3, 3}, {.padding = 1}},
                          Case{"Winograd transposed", {1, 16, 14, 14}, {32, 16, 3, 3}, {.padding = 1}}}) {
        const index_t out = c.w[0];
        const detail::ConvGeometry g = detail::conv_geometry(c.x, c.w, nullptr, c.options);
        const std::string what = c.what;
        const bool transposed = detail::winograd_transposed_applies<double>(g, out);
        if (what.starts_with("Winograd transposed")) REQUIRE(transposed);
        if (what == "Winograd transposed F(4x4)")
            REQUIRE(detail::winograd_transposed_fits<detail::WinogradF4>(g, out));
        if (what == "Winograd") REQUIRE((!transposed && detail::winograd_applies(g, out)));
        if (what == "3x3 by im2col as it is") REQUIRE((!detail::pixel_major_applies<double>(g)));
        const Shape y_shape{c.x[0], out, g.out_h, g.out_w};
        auto normal = [&](Shape shape) {
            Tensor<double> t(std::move(shape));
            for (double& v : t) v = random.normal();
            return t;
        };
        const Tensor<double> x = normal(c.x), w = normal(c.w), residual = normal(y_shape),
                             seed = normal(y_shape), gamma = normal({out}), beta = normal({out}),
                             mean = normal({out}), bias = normal({out});
        Tensor<double> var({out});
        for (double& v : var) v = random.uniform(0.5, 2.0);
        for (const bool with_residual : {false, true})
            for (const bool with_relu : {false, true})
                for (const ReluRule rule : {ReluRule::standard, ReluRule::guided, ReluRule::deconvnet}) {
                    // The convolution's bias with the ReLU, so that it meets each other part.
                    const bool with_bias = with_relu;
                    INFO(c.what << ", residual " << with_residual << ", relu " << with_relu
                                << ", bias " << with_bias << ", rule " << static_cast<int>(rule));
                    Tape<double> fused_tape, tape;
                    const Var<double> xf = fused_tape.variable(x), wf = fused_tape.variable(w),
                                      rf = fused_tape.variable(residual);
                    const Var<double> fused = conv2d_batch_norm(
                        xf, wf, with_bias ? fused_tape.constant(bias) : Var<double>(), c.options,
                        BatchNormConstants<double>{.running_mean = mean, .running_var = var,
                                                   .gamma = &gamma, .beta = &beta},
                        with_residual ? rf : Var<double>(), with_relu);
                    const Var<double> xs = tape.variable(x), ws = tape.variable(w),
                                      rs = tape.variable(residual);
                    const Var<double> conv = with_bias ? conv2d(xs, ws, tape.constant(bias), c.options)
                                                       : conv2d(xs, ws, c.options);
                    Var<double> separate = batch_norm2d(conv, tape.constant(gamma),
                                                        tape.constant(beta), mean, var);
                    if (with_residual) separate = separate + rs;
                    if (with_relu) separate = relu(separate);
                    check_close(fused.value(), separate.value(), 1e-14, "forward");

                    const auto f = fused_tape.gradient(fused, seed, {xf, wf, rf}, {.relu = rule});
                    const auto s = tape.gradient(separate, seed, {xs, ws, rs}, {.relu = rule});
                    check_close(f[0], s[0], 1e-12, "input gradient");
                    check_close(f[1], s[1], 1e-12, "weight gradient");
                    check_close(f[2], s[2], 1e-12, "residual gradient");
                    // One input at a time: the residual alone skips the convolution's backward.
                    check_close(fused_tape.gradient(fused, seed, {rf}, {.relu = rule})[0], s[2],
                                1e-12, "residual gradient alone");
                    check_close(fused_tape.gradient(fused, seed, {xf}, {.relu = rule})[0], s[0],
                                1e-12, "input gradient alone");
                    // The op's own gradient requested too: the backward must not gate it in
                    // place (it may where it is only scratch).
                    const auto f_own =
                        fused_tape.gradient(fused, seed, {fused, xf}, {.relu = rule});
                    check_close(f_own[0], seed, 0.0, "output gradient, requested with the input's");
                    check_close(f_own[1], s[0], 1e-12, "input gradient, with the output's");
                    // The residual also reaching the output by itself: the op's backward then
                    // adds to the residual's gradient rather than writing it.
                    const auto f_twice =
                        fused_tape.gradient(fused + rf, seed, {xf, rf}, {.relu = rule});
                    const auto s_twice =
                        tape.gradient(separate + rs, seed, {xs, rs}, {.relu = rule});
                    check_close(f_twice[0], s_twice[0], 1e-12,
                                "input gradient, residual used twice");
                    check_close(f_twice[1], s_twice[1], 1e-12, "residual gradient, used twice");
                }
        // The convolution and its ReLU alone.
        for (const bool with_bias : {false, true})
            for (const ReluRule rule :
                 {ReluRule::standard, ReluRule::guided, ReluRule::deconvnet}) {
                INFO(c.what << ", conv2d_relu, bias " << with_bias << ", rule "
                            << static_cast<int>(rule));
                Tape<double> fused_tape, tape;
                const Var<double> xf = fused_tape.variable(x), wf = fused_tape.variable(w);
                const Var<double> fused = conv2d_relu(
                    xf, wf, with_bias ? fused_tape.constant(bias) : Var<double>(), c.options);
                const Var<double> xs = tape.variable(x), ws = tape.variable(w);
                const Var<double> separate =
                    relu(with_bias ? conv2d(xs, ws, tape.constant(bias), c.options)
                                   : conv2d(xs, ws, c.options));
                check_close(fused.value(), separate.value(), 0.0, "forward");
                const auto f = fused_tape.gradient(fused, seed, {xf, wf}, {.relu = rule});
                const auto s = tape.gradient(separate, seed, {xs, ws}, {.relu = rule});
                check_close(f[0], s[0], 1e-12, "input gradient");
                check_close(f[1], s[1], 1e-12, "weight gradient");
                check_close(fused_tape.gradient(fused, seed, {xf}, {.relu = rule})[0], s[0], 1e-12,
                            "input gradient alone");
            }
    }
}

TEST_CASE("ops: linear's input gradient for a few images skips the rows of W whose output gradient is zero") {
    Random random(57);
    const index_t batch = 2, in = 1030, out = 1024;  // over 2^20 weights: split by features
    REQUIRE(detail::split_by_features(batch, in * out));
    Tensor<double> x(Shape{batch, in}), w(Shape{out, in}), b(Shape{out}), r(Shape{batch, out});
    for (double& v : x) v = random.normal();
    for (double& v : w) v = random.normal();
    for (double& v : b) v = random.normal();
    for (double& v : r) v = random.normal();
    for (index_t o = 0; o < out; ++o) {  // a third zero for both images, a third for one
        if (o % 3 == 0) r(0, o) = r(1, o) = 0;
        if (o % 3 == 1) r(0, o) = 0;
    }
    for (const bool with_relu : {false, true}) {
        INFO("relu after the layer: " << with_relu);
        Tape<double> tape;
        const Var<double> xv = tape.variable(x);
        const Var<double> y = linear(xv, tape.constant(w), tape.constant(b));
        const Var<double> z = with_relu ? relu(y) : y;
        const Tensor<double> dx = tape.gradient(sum(mul(tape.constant(r), z)), {xv})[0];
        Tensor<double> expected(x.shape());
        for (index_t n = 0; n < batch; ++n)
            for (index_t o = 0; o < out; ++o) {
                const double dy = with_relu && !(y.value()(n, o) > 0) ? 0.0 : r(n, o);
                for (index_t i = 0; i < in; ++i) expected(n, i) += dy * w(o, i);
            }
        check_close(dx, expected, 1e-12, "input gradient");
    }
}

// How check_gemm computes the product: by gemm(), which picks a kernel or Eigen, or by one of
// the register-tiled kernels directly, B packed as it goes or packed beforehand (as convolutions
// pack their weights).
enum class GemmRoute { gemm, default_kernel, default_packed, narrow_kernel, pixel_major_packed };

#if defined(GRADCAM_DETAIL_OWN_GEMM)
template <class Kernel, class T>
void run_kernel(const detail::MatrixView<T>& a, const detail::MatrixView<T>& b, T* c,
                index_t ldc, bool accumulate, bool parallel, bool packed) {
    if (!packed) {
        detail::gemm_parts<Kernel>(a, b, nullptr, c, ldc, accumulate, parallel);
        return;
    }
    const typename Kernel::PackedRight right(b);
    detail::MatrixView<T> shape_only = b;
    shape_only.data = nullptr;  // the kernel must read B from the packed panels only
    detail::gemm_parts<Kernel>(a, shape_only, &right, c, ldc, accumulate, parallel);
}
#endif

// Every path of detail::gemm (the register-tiled kernels with their edge tiles and their split
// over threads; Eigen for narrow products), with operands stored by rows and by columns,
// assigning and accumulating, against a sum in long double.
template <class T>
void check_gemm(index_t M, index_t N, index_t K, bool a_by_columns, bool b_by_columns,
                bool accumulate, bool parallel, Random& random, double tolerance,
                GemmRoute route = GemmRoute::gemm) {
    std::vector<T> a(static_cast<std::size_t>(M * K)), b(static_cast<std::size_t>(K * N)),
        c(static_cast<std::size_t>(M * (N + 3)));
    for (T& v : a) v = static_cast<T>(random.normal());
    for (T& v : b) v = static_cast<T>(random.normal());
    for (T& v : c) v = static_cast<T>(random.normal());
    const auto av = a_by_columns ? detail::view(a.data(), K, M).transposed() : detail::view(a.data(), M, K);
    const auto bv = b_by_columns ? detail::view(b.data(), N, K).transposed() : detail::view(b.data(), K, N);
    const std::vector<T> before = c;
    const index_t ldc = N + 3;  // C is a block of a wider matrix: the 3 extra columns stay
    switch (K > 0 ? route : GemmRoute::gemm) {  // K = 0 never reaches a kernel
#if defined(GRADCAM_DETAIL_OWN_GEMM)
        case GemmRoute::default_kernel:
        case GemmRoute::default_packed:
            run_kernel<detail::GemmKernel<T>>(av, bv, c.data(), ldc, accumulate, parallel,
                                              route == GemmRoute::default_packed);
            break;
        case GemmRoute::narrow_kernel:
            run_kernel<detail::NarrowGemmKernel<T>>(av, bv, c.data(), ldc, accumulate, parallel, false);
            break;
        case GemmRoute::pixel_major_packed:
            run_kernel<detail::PixelMajorKernel<T>>(av, bv, c.data(), ldc, accumulate, parallel, true);
            break;
#endif
        default:
            detail::gemm(av, bv, c.data(), ldc, accumulate, parallel);
    }
    for (index_t i = 0; i < M; ++i)
        for (index_t j = 0; j < ldc; ++j) {
            const std::size_t at = static_cast<std::size_t>(i * ldc + j);
            if (j >= N) {
                REQUIRE(c[at] == before[at]);
                continue;
            }
            long double sum = accumulate ? before[at] : 0, magnitude = 1;
            for (index_t k = 0; k < K; ++k) {
                sum += static_cast<long double>(av(i, k)) * bv(k, j);
                magnitude += std::abs(static_cast<long double>(av(i, k)) * bv(k, j));
            }
            INFO(M << "x" << N << "x" << K << " at " << i << "," << j << ", route "
                   << static_cast<int>(route));
            REQUIRE(std::abs(static_cast<double>(c[at] - sum)) <= tolerance * static_cast<double>(magnitude));
        }
}

TEST_CASE("ops: gemm equals the direct sum for every tile edge, storage order and thread split") {
    Random random(80);
    // Around the edges of the tiles: 6, 7, 8 and 12 rows; 16, 32, 48 and 64 columns.
    for (const index_t M : {1, 7, 8, 13, 40})
        for (const index_t N : {1, 17, 33, 48, 70})
            for (const index_t K : {0, 1, 7, 300})
                for (int flags = 0; flags < 16; ++flags) {
                    const bool a_cols = flags & 1, b_cols = flags & 2, acc = flags & 4, par = flags & 8;
                    for (const GemmRoute route :
                         {GemmRoute::gemm, GemmRoute::default_kernel, GemmRoute::default_packed,
                          GemmRoute::narrow_kernel, GemmRoute::pixel_major_packed}) {
                        if (route > GemmRoute::default_kernel && flags % 3 != 0) continue;
                        check_gemm<double>(M, N, K, a_cols, b_cols, acc, par, random, 1e-14, route);
                        check_gemm<float>(M, N, K, a_cols, b_cols, acc, par, random, 1e-6, route);
                    }
                }
    // Larger than one block of every kind (kc, mc, nc), so each loop runs more than once, and
    // large enough to be split over threads: by columns (wider than tall), then by rows.
    check_gemm<float>(200, 1100, 600, false, false, true, true, random, 1e-6);
    check_gemm<double>(130, 700, 300, true, true, false, true, random, 1e-14);
    check_gemm<float>(1100, 200, 600, true, false, false, true, random, 1e-6);
    check_gemm<double>(700, 130, 300, false, true, true, true, random, 1e-14);
    // No more rows than one block of A (mc, 48 or more): B is read in place, A too when stored
    // by columns, over several blocks of columns (per thread) and of depth, with partial panels
    // at both edges.
    check_gemm<float>(41, 3300, 600, true, false, true, true, random, 1e-6);
    check_gemm<double>(47, 1700, 520, false, false, false, true, random, 1e-14);
    // With B packed beforehand, threads split by rows once there are enough, else by columns.
    check_gemm<float>(400, 300, 600, false, true, false, true, random, 1e-6, GemmRoute::pixel_major_packed);
    check_gemm<double>(49, 700, 300, true, true, true, true, random, 1e-14, GemmRoute::pixel_major_packed);
    check_gemm<float>(300, 1100, 520, false, false, true, true, random, 1e-6, GemmRoute::default_packed);
    // Wider than tall, yet split by rows on two threads: 784 columns are 17 panels, 512 rows
    // 64 tiles.
#ifdef _OPENMP
    const int saved_threads = omp_get_max_threads();
    omp_set_num_threads(2);
#endif
    check_gemm<float>(512, 784, 7, false, false, false, true, random, 1e-6);
#ifdef _OPENMP
    omp_set_num_threads(saved_threads);
#endif
}

TEST_CASE("ops: transpose_block moves every value, by 16 x 16 tiles and at their edges") {
    Random random(81);
    const auto check = [&](auto zero, index_t m, index_t n, bool accumulate) {
        using T = decltype(zero);
        const index_t ld_src = n + 5, ld_dst = m + 3;  // rows longer than the block
        std::vector<T> src(static_cast<std::size_t>(m * ld_src)), dst(static_cast<std::size_t>(n * ld_dst));
        for (T& v : src) v = static_cast<T>(random.normal());
        for (T& v : dst) v = static_cast<T>(random.normal());
        std::vector<T> expected = dst;
        for (index_t i = 0; i < m; ++i)
            for (index_t j = 0; j < n; ++j) {
                T& e = expected[static_cast<std::size_t>(j * ld_dst + i)];
                e = (accumulate ? e : T(0)) + src[static_cast<std::size_t>(i * ld_src + j)];
            }
        detail::transpose_block(src.data(), ld_src, m, n, dst.data(), ld_dst, accumulate);
        INFO(m << " x " << n << (accumulate ? ", accumulating" : ""));
        CHECK(dst == expected);  // the padding between rows included: untouched
    };
    for (const index_t m : {1, 15, 16, 17, 49, 256})
        for (const index_t n : {1, 16, 31, 64})
            for (const bool accumulate : {false, true}) {
                check(0.0f, m, n, accumulate);
                check(0.0, m, n, accumulate);
            }
}

// PyTorch's rule for one window, scanned in row-major order: the first valid position, then
// any larger value or NaN. Returns the position in the plane, -1 for a padding-only window.
index_t max_pool_reference_argmax(const double* plane, index_t height, index_t width, index_t oh,
                                  index_t ow, const Pool2dOptions& o, double& value) {
    const Size2 stride = o.stride.h == 0 ? o.kernel : o.stride;
    index_t at = -1;
    value = -std::numeric_limits<double>::infinity();
    for (index_t i = 0; i < o.kernel.h; ++i)
        for (index_t j = 0; j < o.kernel.w; ++j) {
            const index_t ih = oh * stride.h - o.padding.h + i * o.dilation.h;
            const index_t iw = ow * stride.w - o.padding.w + j * o.dilation.w;
            if (ih < 0 || ih >= height || iw < 0 || iw >= width) continue;
            const double v = plane[ih * width + iw];
            if (at < 0 || v > value || std::isnan(v)) {
                value = v;
                at = ih * width + iw;
            }
        }
    return at;
}

TEST_CASE("ops: max_pool2d's values and gradient follow PyTorch's scan, ties and NaN included") {
    // Few distinct values, so that most windows hold ties (as after a ReLU); NaN and -inf too.
    // Constants take the values-only pass, variables the one that keeps each argmax: both must
    // give the reference's values, and the gradient must reach the reference's positions. Odd
    // and even widths: rows are split into even and odd columns for stride 2.
    Random random(79);
    for (const Shape& shape : {Shape{2, 3, 11, 13}, Shape{1, 3, 10, 12}})
    for (const Pool2dOptions& options :
         {Pool2dOptions{.kernel = 3, .stride = 2, .padding = 1}, Pool2dOptions{.kernel = 2},
          Pool2dOptions{.kernel = {2, 3}, .stride = {1, 2}, .ceil_mode = true},
          Pool2dOptions{.kernel = 3, .stride = 1, .padding = 1, .dilation = 2},
          Pool2dOptions{.kernel = 2, .stride = 1, .padding = 1, .dilation = 7},
          Pool2dOptions{.kernel = 3, .stride = 3, .padding = 1}}) {
        CAPTURE(shape);
        CAPTURE(options.kernel.h);
        CAPTURE(options.stride.w);
        CAPTURE(options.dilation.h);
        Tensor<double> x(shape);
        for (double& v : x) v = std::floor(random.uniform(-1, 3));
        x[5] = x[7] = std::numeric_limits<double>::quiet_NaN();
        x[200] = std::numeric_limits<double>::quiet_NaN();
        x[300] = x[301] = -std::numeric_limits<double>::infinity();
        Tape<double> tape;
        const Var<double> xv = tape.variable(x);
        const Var<double> recorded = max_pool2d(xv, options);
        const Tensor<double> values = max_pool2d(tape.constant(x), options).value();
        REQUIRE(values.shape() == recorded.shape());
        Tensor<double> dy(recorded.shape());
        for (double& v : dy) v = random.normal();
        const Tensor<double> dx = tape.gradient(recorded, dy, {xv})[0];

        const index_t planes = shape[0] * shape[1], height = shape[2], width = shape[3];
        const index_t out_h = recorded.shape()[2], out_w = recorded.shape()[3];
        Tensor<double> expected_dx(shape);
        for (index_t p = 0; p < planes; ++p)
            for (index_t oh = 0; oh < out_h; ++oh)
                for (index_t ow = 0; ow < out_w; ++ow) {
                    const index_t o = (p * out_h + oh) * out_w + ow;
                    INFO("output " << o);
                    double expected = 0;
                    const index_t at = max_pool_reference_argmax(
                        x.data() + p * height * width, height, width, oh, ow, options, expected);
                    if (at >= 0) expected_dx[p * height * width + at] += dy[o];
                    for (const double got : {values[o], recorded.value()[o]}) {
                        if (std::isnan(expected))
                            CHECK(std::isnan(got));
                        else
                            CHECK(got == expected);
                    }
                }
        check_close(dx, expected_dx, 1e-12, "gradient at the reference's argmax");
    }
}

#ifdef _OPENMP
TEST_CASE("ops: one thread and two threads give the same results") {
    // Batch parallelism in conv2d (with per-thread weight gradients) for 4 images; for one, the
    // Winograd products and planes on separate threads inside the image; plane parallelism in
    // pooling, batch norm and ReLU: sums may be grouped differently, so agree to rounding.
    Random random(77);
    for (const index_t batch : {4, 1}) {
        INFO("batch " << batch);
        Tensor<double> x(Shape{batch, 16, 66, 66}), w(Shape{16, 16, 3, 3});  // untransposed Winograd
        for (double& v : x) v = random.normal();
        for (double& v : w) v = random.normal();
        auto run = [&](int threads) {
            const int saved = omp_get_max_threads();
            omp_set_num_threads(threads);
            Tape<double> tape;
            const Var<double> xv = tape.variable(x), wv = tape.variable(w);
            Tensor<double> running_mean(Shape{16}), running_var(Shape{16}, 1.0);
            const Var<double> y =
                max_pool2d(relu(batch_norm2d_training(conv2d(xv, wv, {.padding = 1}), Var<double>(),
                                                      Var<double>(), running_mean, running_var)),
                           {.kernel = 3, .stride = 2, .padding = 1});
            auto grads = tape.gradient(sum(y * y), {xv, wv});
            omp_set_num_threads(saved);
            return std::tuple{y.value(), grads[0], grads[1]};
        };
        const auto [y1, dx1, dw1] = run(1);
        const auto [y2, dx2, dw2] = run(2);
        check_close(y2, y1, 1e-12, "output");
        check_close(dx2, dx1, 1e-12, "input gradient");
        check_close(dw2, dw1, 1e-12, "weight gradient");
    }
}
#endif
