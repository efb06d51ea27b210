// Uses the installed headers: a Grad-CAM map written as a PNG heatmap.
#include <gradcam/gradcam.hpp>
#include <iostream>

int main(int argc, char** argv) {
    using namespace gradcam;
    nn::Sequential<float> net;
    net.emplace_back<nn::Conv2d<float>>(3, 4, 3, Conv2dOptions{.padding = 1});
    net.emplace_back<nn::ReLU<float>>();
    net.emplace_back<nn::AdaptiveAvgPool2d<float>>(1);
    net.emplace_back<nn::Flatten<float>>();
    net.emplace_back<nn::Linear<float>>(4, 3);
    net.initialise(5);
    const Tensor<float> input(Shape{1, 3, 8, 8}, 0.25f);
    const CamResult<float> map = grad_cam(net, input, "1");
    io::write_png(argc > 1 ? argv[1] : "consumer.png", io::apply_jet(map.normalised.subtensor(0)));
    std::cout << "map " << map.upsampled.shape() << "\n";
}
