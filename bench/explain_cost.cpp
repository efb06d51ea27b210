// What each explanation costs compared with a plain forward pass, on a ResNet-style network
// at 64x64. Compare methods as ratios of times measured in one run.
#include <benchmark/benchmark.h>

#include <gradcam/gradcam.hpp>
#include <gradcam/models/resnet.hpp>

using namespace gradcam;

namespace {

// A ResNet-style network: a stride-2 stem of 32 channels, three stages 32, 64 and 128 wide.
struct Net : models::ResNet<float> {
    Net()
        : models::ResNet<float>({.blocks = {1, 1, 1},
                                 .widths = {32, 64, 128},
                                 .stem_channels = 32,
                                 .stem_kernel = 3,
                                 .stem_stride = 2,
                                 .stem_max_pool = false,
                                 .classes = 10}) {}
};

Net& network() {
    static Net net;
    static const bool initialised = (net.initialise(1), true);
    (void)initialised;
    return net;
}

Tensor<float> input(index_t batch) {
    Random random(2);
    Tensor<float> x(Shape{batch, 3, 64, 64});
    for (float& v : x) v = static_cast<float>(random.normal());
    return x;
}

template <class Method>
void run(benchmark::State& state, Method method) {
    const Tensor<float> x = input(state.range(0));
    for (auto _ : state) benchmark::DoNotOptimize(method(x));
    state.SetItemsProcessed(state.iterations() * state.range(0));
}

void forward(benchmark::State& state) {
    run(state, [](const Tensor<float>& x) {
        Tape<float> tape;
        return network()(tape.constant(x)).value();
    });
}
void grad_cam_layer3(benchmark::State& state) {
    run(state, [](const Tensor<float>& x) { return grad_cam(network(), x, "layer3").raw; });
}
void grad_cam_layer1(benchmark::State& state) {
    run(state, [](const Tensor<float>& x) { return grad_cam(network(), x, "layer1").raw; });
}
void cam_layer3(benchmark::State& state) {
    run(state, [](const Tensor<float>& x) { return cam(network(), x, "layer3", "fc").raw; });
}
void guided_backprop_input(benchmark::State& state) {
    run(state, [](const Tensor<float>& x) { return guided_backprop(network(), x).gradient; });
}
void guided_grad_cam_layer3(benchmark::State& state) {
    run(state, [](const Tensor<float>& x) { return guided_grad_cam(network(), x, "layer3").map; });
}

}  // namespace

BENCHMARK(forward)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond);
BENCHMARK(cam_layer3)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond);
BENCHMARK(grad_cam_layer3)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond);
BENCHMARK(grad_cam_layer1)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond);
BENCHMARK(guided_backprop_input)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond);
BENCHMARK(guided_grad_cam_layer3)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
