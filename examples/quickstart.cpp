// Quick start: load a network, pick a layer by name, get its Grad-CAM map, write a heatmap.
// Run it from the repository's top directory (the test does).
#include <cstdio>

#include <gradcam/gradcam.hpp>
#include <gradcam/models/shapes.hpp>

int main() {
    using namespace gradcam;
    models::ResNet<float> net(models::shapes_resnet_config());  // torchvision's layer names
    load_state(net, "examples/models/shapes_resnet.safetensors");

    const io::Image photo = io::read_image("examples/data/two_shapes.png");
    const Tensor<float> input = io::to_input<float>(photo);  // [1, 3, 64, 64], normalised

    const CamResult<float> top = grad_cam(net, input, "layer3");      // the top class
    const CamResult<float> star = grad_cam(net, input, "layer3", 5);  // or any class
    std::printf("top class %lld\n", static_cast<long long>(top.classes[0]));
    io::write_png("quickstart_top.png", io::overlay(photo, top.normalised.subtensor(0)));
    io::write_png("quickstart_star.png", io::overlay(photo, star.normalised.subtensor(0)));
}
