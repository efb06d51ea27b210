// Parity at full size: torchvision's VGG-16 and ResNet-50 at 224x224 with PyTorch's weights give
// PyTorch's logits and Grad-CAM maps. Runs through tests/full_size_parity.sh, which makes the
// references with PyTorch when it is installed; otherwise the case has nothing to compare.
#include <doctest/doctest.h>

#include <cstdlib>
#include <gradcam/models/torchvision.hpp>

#include "small_nets.hpp"

using namespace gradcam;

namespace {

template <class Net>
void check_network(Net& net, const std::string& directory, const std::string& name) {
    INFO(name);
    load_state(net, directory + "/" + name + ".weights.safetensors");
    const io::SafetensorsFile reference(directory + "/" + name + ".reference.safetensors");
    const Tensor<float> input = reference.read<float>("input");
    const CamResult<float> map = grad_cam(net, input, reference.metadata().at("layer"));
    const Tensor<float> logits = reference.read<float>("logits"), raw = reference.read<float>("gradcam_raw");
    small_nets::check_close(map.outputs, logits, 1e-3, "logits");
    CHECK(map.classes[0] == static_cast<index_t>(reference.read<double>("classes")[0]));
    small_nets::check_close(map.raw, raw, 1e-3, "Grad-CAM raw map");
    MESSAGE(name << ": largest difference from PyTorch, relative to the largest magnitude: logits "
                 << max_abs_difference(map.outputs, logits) / max_abs(logits) << ", Grad-CAM map "
                 << max_abs_difference(map.raw, raw) / max_abs(raw));
}

}  // namespace

TEST_CASE("full size: VGG-16 and ResNet-50 match PyTorch to 1e-3") {
    const char* directory = std::getenv("GRADCAM_FULL_SIZE_DIR");
    if (!directory) {
        MESSAGE("no references (GRADCAM_FULL_SIZE_DIR unset): run by tests/full_size_parity.sh");
        return;
    }
    {
        models::Vgg<float> vgg16(models::vgg16_config());
        check_network(vgg16, directory, "vgg16");
    }
    models::ResNet<float> resnet50(models::resnet50_config());
    check_network(resnet50, directory, "resnet50");
}
