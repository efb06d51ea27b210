// Peak resident memory of one explanation, in a process of its own (the peak is a process-wide
// high-water mark): the network is built and its weights filled, then one method runs.
//
//   peak_memory vgg16|resnet18|resnet50 forward|grad_cam|cam|guided_grad_cam [batch]
//
// Prints the weights' size, the resident size before the method, and the peak, in MiB.
#include <sys/resource.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <gradcam/gradcam.hpp>
#include <gradcam/models/torchvision.hpp>
#include <memory>
#include <string>

using namespace gradcam;

namespace {

double resident_mib() {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
    return 0;
}

double peak_mib() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: peak_memory vgg16|resnet18|resnet50 forward|grad_cam|cam|guided_grad_cam [batch]\n");
        return 2;
    }
    const std::string model = argv[1], method = argv[2];
    const index_t batch = argc > 3 ? std::stoll(argv[3]) : 1;
    std::unique_ptr<nn::Module<float>> net;
    std::string layer = "layer4";
    if (model == "vgg16") {
        net = std::make_unique<models::Vgg<float>>(models::vgg16_config());
        layer = "features.29";
    } else if (model == "resnet18") {
        net = std::make_unique<models::ResNet<float>>(models::resnet18_config());
    } else if (model == "resnet50") {
        net = std::make_unique<models::ResNet<float>>(models::resnet50_config());
    } else {
        std::fprintf(stderr, "peak_memory: unknown model '%s'\n", model.c_str());
        return 2;
    }
    net->initialise(1);
    double weights = 0;
    for (auto& [key, tensor] : net->state()) weights += static_cast<double>(tensor->size()) * sizeof(float);
    Tensor<float> x(Shape{batch, 3, 224, 224}, 0.5f);
    const double before = resident_mib();
    if (method == "forward") {
        Tape<float> tape;
        (*net)(tape.constant(x));
    } else if (method == "grad_cam") {
        grad_cam(*net, x, layer);
    } else if (method == "cam") {
        cam(*net, x, layer, net->tensor("fc.weight"));
    } else if (method == "guided_grad_cam") {
        guided_grad_cam(*net, x, layer);
    } else {
        std::fprintf(stderr, "peak_memory: unknown method '%s'\n", method.c_str());
        return 2;
    }
    std::printf("%s %s batch %lld: weights %.1f MiB, resident before %.1f MiB, peak %.1f MiB (%.2fx the weights)\n",
                model.c_str(), method.c_str(), static_cast<long long>(batch), weights / 1048576.0, before, peak_mib(),
                peak_mib() / (weights / 1048576.0));
}
