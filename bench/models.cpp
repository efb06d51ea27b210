// Explanation cost on real-size networks: VGG-16, ResNet-18 and ResNet-50 at 224x224, batch 1
// and 8, for a forward pass, Grad-CAM, CAM and Guided Grad-CAM. Reports time and GFLOP/s (of
// the forward's multiply-adds, counted twice). Weights are seeded random: speed does not
// depend on their values. scripts/bench_compare runs this beside PyTorch and prints ratios.
#include <benchmark/benchmark.h>

#include <gradcam/gradcam.hpp>
#include <algorithm>
#include <chrono>
#include <gradcam/models/torchvision.hpp>
#include <limits>
#include <map>
#include <memory>
#include <utility>
#include <vector>
#include <string>

using namespace gradcam;

namespace {

// Multiply-adds of one 224x224 forward (torchvision's published figures).
constexpr double vgg16_macs = 15.47e9, resnet18_macs = 1.81e9, resnet50_macs = 4.09e9;

// Built once per process: seeded random weights (speed does not depend on their values).
template <class Net>
std::unique_ptr<Net> build(const auto& config) {
    auto net = std::make_unique<Net>(config);
    net->initialise(1);
    return net;
}
models::Vgg<float>& vgg16_network() {
    static const auto net = build<models::Vgg<float>>(models::vgg16_config());
    return *net;
}
models::ResNet<float>& resnet18_network() {
    static const auto net = build<models::ResNet<float>>(models::resnet18_config());
    return *net;
}
models::ResNet<float>& resnet50_network() {
    static const auto net = build<models::ResNet<float>>(models::resnet50_config());
    return *net;
}

Tensor<float> input(index_t batch) {
    Random random(2);
    Tensor<float> x(Shape{batch, 3, 224, 224});
    for (float& v : x) v = static_cast<float>(random.normal());
    return x;
}

enum class Method { forward, grad_cam, cam, guided_grad_cam };

// Times each iteration itself and reports, beside Google Benchmark's mean, the fastest one
// (best_ms, best_GFLOP/s): on a shared machine noise only ever adds time, so the minimum is the
// steadiest figure, and it is the one scripts/bench_pytorch.py reports for PyTorch.
template <class Body>
void timed_iterations(benchmark::State& state, double flop, Body&& body) {
    double best = std::numeric_limits<double>::infinity();
    for (auto _ : state) {
        const auto start = std::chrono::steady_clock::now();
        body();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    state.counters["GFLOP/s"] = benchmark::Counter(1e-9 * flop, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["best_ms"] = 1e3 * best;
    state.counters["best_GFLOP/s"] = 1e-9 * flop / best;
}

// One explanation (or forward) of x by `method`, its result kept from the optimiser.
template <class Net>
void explain_once(Net& net, const Tensor<float>& x, const std::string& layer,
                  const std::string& pooled, const std::string& classifier, Method method) {
    switch (method) {
        case Method::forward: {
            Tape<float> tape;
            benchmark::DoNotOptimize(net(tape.constant(x)).value().data());
            break;
        }
        case Method::grad_cam:
            benchmark::DoNotOptimize(grad_cam(net, x, layer).raw.data());
            break;
        case Method::cam:
            benchmark::DoNotOptimize(cam(net, x, pooled, net.tensor(classifier)).raw.data());
            break;
        case Method::guided_grad_cam:
            benchmark::DoNotOptimize(guided_grad_cam(net, x, layer).map.data());
            break;
    }
}

template <class Net>
void run(benchmark::State& state, Net& net, const std::string& layer, const std::string& pooled,
         const std::string& classifier, double macs, Method method) {
    const index_t batch = state.range(0);
    const Tensor<float> x = input(batch);
    timed_iterations(state, 2 * macs * static_cast<double>(batch),
                     [&] { explain_once(net, x, layer, pooled, classifier, method); });
    state.SetItemsProcessed(state.iterations() * batch);
}

// A forward, a Grad-CAM and a Guided Grad-CAM in turn in each iteration (batch 1), so that the
// methods' costs in forwards are measured side by side: this machine's speed drifts for seconds
// to minutes at a time, and fastest times taken from separate benchmarks can come from different
// spells (ResNet-18's forward once ran at 9.9 ms in one round and 12.2-13.0 in the next two). The
// counters are each method's fastest iteration and their ratios to the forward's.
template <class Net>
void run_side_by_side(benchmark::State& state, Net& net, const std::string& layer) {
    const Tensor<float> x = input(1);
    constexpr Method methods[] = {Method::forward, Method::grad_cam, Method::guided_grad_cam};
    double best[3] = {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity(),
                      std::numeric_limits<double>::infinity()};
    int first = 0;
    for (auto _ : state) {
        // The order rotates: each method follows each other one as often (what ran just before
        // leaves the caches and the buffer cache in different states).
        for (int i = 0; i < 3; ++i) {
            const int m = (first + i) % 3;
            const auto start = std::chrono::steady_clock::now();
            explain_once(net, x, layer, "", "", methods[m]);
            best[m] = std::min(best[m], std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        }
        first = (first + 1) % 3;
    }
    state.counters["forward_ms"] = 1e3 * best[0];
    state.counters["grad_cam_ms"] = 1e3 * best[1];
    state.counters["guided_grad_cam_ms"] = 1e3 * best[2];
    state.counters["grad_cam/forward"] = best[1] / best[0];
    state.counters["guided_grad_cam/forward"] = best[2] / best[0];
}

void vgg16(benchmark::State& state, Method method) {
    auto& net = vgg16_network();
    if (method == Method::cam) {
        state.SkipWithError("VGG-16 has no global-average-pool + linear head; CAM does not apply");
        return;
    }
    run(state, net, "features.29", "", "", vgg16_macs, method);
}
void resnet18(benchmark::State& state, Method method) {
    run(state, resnet18_network(), "layer4", "layer4", "fc.weight",
        resnet18_macs, method);
}
void resnet50(benchmark::State& state, Method method) {
    run(state, resnet50_network(), "layer4", "layer4", "fc.weight",
        resnet50_macs, method);
}
void side_by_side(benchmark::State& state) {
    switch (state.range(0)) {
        case 18:
            return run_side_by_side(state, resnet18_network(), "layer4");
        case 50:
            return run_side_by_side(state, resnet50_network(), "layer4");
        default:
            return run_side_by_side(state, vgg16_network(), "features.29");
    }
}

// Every convolution of ResNet-50 at 224x224, batch 1, each on an input of its own shape: run()
// calls them one by one as separate conv2d calls and keeps each shape's fastest call.
class ResNet50Convolutions {
  public:
    ResNet50Convolutions() {
        auto& net = resnet50_network();
        Tape<float> tape;
        std::vector<nn::Conv2d<float>*> convs;
        for (nn::Module<float>* m : net.modules())
            if (auto* conv = dynamic_cast<nn::Conv2d<float>*>(m)) {
                convs.push_back(conv);
                tape.keep(conv->path());
            }
        net(tape.constant(input(1)));
        for (nn::Conv2d<float>* conv : convs) {
            const Shape out = tape.find(conv->path()).shape();
            const Tensor<float>& w = conv->weight();
            const index_t stride = conv->options().stride.h, h = out[2] * stride, width = out[3] * stride;
            std::string shape = std::to_string(w.dim(1)) + "->" + std::to_string(w.dim(0)) + " " +
                                std::to_string(w.dim(2)) + "x" + std::to_string(w.dim(3)) + " s" +
                                std::to_string(stride) + " " + std::to_string(h) + "x" + std::to_string(width);
            layers_.push_back({Tensor<float>(Shape{1, w.dim(1), h, width}, 0.5f), conv, shape});
            by_shape_.try_emplace(shape, std::numeric_limits<double>::infinity(), 0).first->second.second++;
            macs_ += static_cast<double>(out[1] * out[2] * out[3] * w.dim(1) * w.dim(2) * w.dim(3));
        }
    }

    double flop() const { return 2 * macs_; }

    void run() {
        for (Layer& layer : layers_) {
            Tape<float> t;
            const auto start = std::chrono::steady_clock::now();
            // Both operands by reference, not copied onto the tape: the clock times the
            // convolution alone, as on PyTorch's side.
            benchmark::DoNotOptimize(conv2d(t.parameter(layer.x), t.parameter(layer.conv->weight()),
                                            layer.conv->options())
                                         .value()
                                         .data());
            double& best = by_shape_[layer.shape].first;
            best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        }
    }

    // Each shape's fastest call, as a counter "ms <in>-><out> <k>x<k> s<stride> <h>x<w> x<count>".
    void report(benchmark::State& state) const {
        for (const auto& [shape, entry] : by_shape_)
            state.counters["ms " + shape + " x" + std::to_string(entry.second)] = 1e3 * entry.first;
    }

  private:
    struct Layer {
        Tensor<float> x;
        nn::Conv2d<float>* conv;
        std::string shape;
    };
    std::vector<Layer> layers_;
    std::map<std::string, std::pair<double, int>> by_shape_;  // fastest call, count
    double macs_ = 0;
};

// ResNet-50's convolutions one by one: the share of the machine's GEMM speed they reach
// (compare with eigen_gemm below). The rate counts the direct convolution's multiply-adds, also
// where Winograd does fewer: it is the effective rate, what a user waits for. Each shape's
// fastest call is reported too, which scripts/bench_compare sets beside PyTorch's time for the
// same convolution.
void resnet50_convolutions(benchmark::State& state) {
    ResNet50Convolutions convolutions;
    timed_iterations(state, convolutions.flop(), [&] { convolutions.run(); });
    convolutions.report(state);
}

// A square n x n x n float product by `multiply(a, b, c)`, the reference speeds.
template <class Multiply>
void square_gemm(benchmark::State& state, Multiply&& multiply) {
    const index_t n = state.range(0);
    detail::RowMajorMatrix<float> a = detail::RowMajorMatrix<float>::Random(n, n), b = a, c(n, n);
    timed_iterations(state, 2 * static_cast<double>(n * n * n), [&] {
        multiply(a, b, c);
        benchmark::DoNotOptimize(c.data());
    });
}

// Eigen's own large square GEMM on this machine, with the same threads.
void eigen_gemm(benchmark::State& state) {
    square_gemm(state, [](const auto& a, const auto& b, auto& c) { c.noalias() = a * b; });
}

// Eigen's 2048^3 product and ResNet-50's convolutions in turn in each iteration (the order
// alternating), so that their rates are compared within the same few seconds, as side_by_side
// does for the explanations: the fastest rate of each and their ratio.
void convolutions_side_by_side(benchmark::State& state) {
    ResNet50Convolutions convolutions;
    constexpr index_t n = 2048;
    detail::RowMajorMatrix<float> a = detail::RowMajorMatrix<float>::Random(n, n), b = a, c(n, n);
    double gemm_best = std::numeric_limits<double>::infinity(), convolutions_best = gemm_best;
    bool gemm_first = true;
    const auto timed = [](auto&& body) {
        const auto start = std::chrono::steady_clock::now();
        body();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    for (auto _ : state) {
        for (int i = 0; i < 2; ++i) {
            if ((i == 0) == gemm_first) {
                gemm_best = std::min(gemm_best, timed([&] {
                                         c.noalias() = a * b;
                                         benchmark::DoNotOptimize(c.data());
                                     }));
            } else {
                convolutions_best = std::min(convolutions_best, timed([&] { convolutions.run(); }));
            }
        }
        gemm_first = !gemm_first;
    }
    const double gemm_rate = 2e-9 * static_cast<double>(n * n * n) / gemm_best,
                 convolutions_rate = 1e-9 * convolutions.flop() / convolutions_best;
    state.counters["eigen_gemm_GFLOP/s"] = gemm_rate;
    state.counters["convolutions_GFLOP/s"] = convolutions_rate;
    state.counters["convolutions/eigen_gemm"] = convolutions_rate / gemm_rate;
}

// The library's own GEMM (detail/gemm.hpp), which the convolutions use, on the same product.
void gradcam_gemm(benchmark::State& state) {
    square_gemm(state, [](const auto& a, const auto& b, auto& c) {
        detail::gemm(detail::view(a.data(), a.rows(), a.cols()), detail::view(b.data(), b.rows(), b.cols()),
                     c.data(), c.cols(), false);
    });
}

}  // namespace

BENCHMARK(gradcam_gemm)->Arg(2048)->Unit(benchmark::kMillisecond)->MinTime(1.0)->UseRealTime();
BENCHMARK(eigen_gemm)->Arg(2048)->Unit(benchmark::kMillisecond)->MinTime(1.0)->UseRealTime();
BENCHMARK(resnet50_convolutions)->Unit(benchmark::kMillisecond)->MinTime(1.0)->UseRealTime();
BENCHMARK(convolutions_side_by_side)->Unit(benchmark::kMillisecond)->MinTime(3.0)->UseRealTime();

#define GRADCAM_BENCH(model, method)                                                       \
    BENCHMARK_CAPTURE(model, method, Method::method)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond) \
        ->MinTime(1.0)->UseRealTime()

GRADCAM_BENCH(resnet50, forward);
GRADCAM_BENCH(resnet50, grad_cam);
GRADCAM_BENCH(resnet50, cam);
GRADCAM_BENCH(resnet50, guided_grad_cam);
GRADCAM_BENCH(resnet18, forward);
GRADCAM_BENCH(resnet18, grad_cam);
GRADCAM_BENCH(resnet18, cam);
GRADCAM_BENCH(resnet18, guided_grad_cam);
GRADCAM_BENCH(vgg16, forward);
GRADCAM_BENCH(vgg16, grad_cam);
GRADCAM_BENCH(vgg16, guided_grad_cam);
// 16 for VGG-16, 18 and 50 for the ResNets.
BENCHMARK(side_by_side)->Arg(50)->Arg(18)->Arg(16)->Unit(benchmark::kMillisecond)->MinTime(3.0)->UseRealTime();

BENCHMARK_MAIN();
