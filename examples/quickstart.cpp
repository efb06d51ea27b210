// Quick start: build a network, pick a layer by name, get its Grad-CAM map, write a heatmap.
#include <gradcam/data/shapes.hpp>
#include <gradcam/gradcam.hpp>

int main() {
    using namespace gradcam;
    nn::Sequential<float> net;  // children are named "0", "1", ... as in PyTorch
    net.emplace_back<nn::Conv2d<float>>(3, 16, 3, Conv2dOptions{.padding = 1});
    net.emplace_back<nn::ReLU<float>>();
    net.emplace_back<nn::MaxPool2d<float>>(Pool2dOptions{.kernel = 2});
    net.emplace_back<nn::Conv2d<float>>(16, 32, 3, Conv2dOptions{.padding = 1});
    net.emplace_back<nn::ReLU<float>>();  // "4": the target layer
    net.emplace_back<nn::AdaptiveAvgPool2d<float>>(1);
    net.emplace_back<nn::Flatten<float>>();
    net.emplace_back<nn::Linear<float>>(32, 6);
    net.initialise(1);  // or: load_state(net, "weights.safetensors");

    const io::Image photo = shapes::draw_scene(3).image;  // or: io::read_image("photo.jpg")
    const Tensor<float> input = io::to_input<float>(photo);
    const CamResult<float> map = grad_cam(net, input, "4");  // target: the top class
    io::write_png("quickstart.png", io::overlay(photo, map.normalised.subtensor(0)));
}
