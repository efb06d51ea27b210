// What each explanation costs compared with a plain forward pass, on a ResNet-style network
// at 64x64. Compare methods as ratios of times measured in one run.
#include <benchmark/benchmark.h>

#include <gradcam/gradcam.hpp>

using namespace gradcam;

namespace {

struct Block : nn::Module<float> {
    nn::Conv2d<float>& conv1;
    nn::BatchNorm2d<float>& bn1;
    nn::Conv2d<float>& conv2;
    nn::BatchNorm2d<float>& bn2;
    nn::Conv2d<float>& shortcut;
    Block(index_t in, index_t out)
        : conv1(submodule<nn::Conv2d<float>>("conv1", in, out, 3,
                                             Conv2dOptions{.stride = 2, .padding = 1}, false)),
          bn1(submodule<nn::BatchNorm2d<float>>("bn1", out)),
          conv2(submodule<nn::Conv2d<float>>("conv2", out, out, 3, Conv2dOptions{.padding = 1},
                                             false)),
          bn2(submodule<nn::BatchNorm2d<float>>("bn2", out)),
          shortcut(submodule<nn::Conv2d<float>>("shortcut", in, out, 1, Conv2dOptions{.stride = 2},
                                                false)) {}
    Var<float> forward(const Var<float>& x) override {
        return relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x));
    }
};

struct Net : nn::Module<float> {
    nn::Conv2d<float>& stem =
        submodule<nn::Conv2d<float>>("stem", 3, 32, 3, Conv2dOptions{.padding = 1});
    nn::ReLU<float>& relu1 = submodule<nn::ReLU<float>>("relu");
    Block& layer1 = submodule<Block>("layer1", 32, 64);
    Block& layer2 = submodule<Block>("layer2", 64, 128);
    Block& layer3 = submodule<Block>("layer3", 128, 256);
    nn::AdaptiveAvgPool2d<float>& pool = submodule<nn::AdaptiveAvgPool2d<float>>("avgpool", 1);
    nn::Linear<float>& fc = submodule<nn::Linear<float>>("fc", 256, 10);
    Var<float> forward(const Var<float>& x) override {
        return fc(flatten(pool(layer3(layer2(layer1(relu1(stem(x))))))));
    }
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
