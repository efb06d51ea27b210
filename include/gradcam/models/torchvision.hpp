// The torchvision architectures by name: VGG-11/16 (with or without batch norm) and
// ResNet-18/34/50/101, as configurations of the builders in vgg.hpp and resnet.hpp. A network
// built from them has torchvision's state_dict keys, so weights exported from PyTorch
// (scripts/export_pytorch.py) load key for key.
#pragma once

#include "gradcam/models/resnet.hpp"
#include "gradcam/models/vgg.hpp"

namespace gradcam::models {

inline VggConfig vgg11_config(index_t classes = 1000, bool batch_norm = false) {
    constexpr int M = VggConfig::max_pool;
    return {.layers = {64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M},
            .batch_norm = batch_norm,
            .classes = classes};
}

inline VggConfig vgg16_config(index_t classes = 1000, bool batch_norm = false) {
    constexpr int M = VggConfig::max_pool;
    return {.layers = {64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M},
            .batch_norm = batch_norm,
            .classes = classes};
}

inline ResNetConfig resnet18_config(index_t classes = 1000) {
    return {.bottleneck = false, .blocks = {2, 2, 2, 2}, .classes = classes};
}
inline ResNetConfig resnet34_config(index_t classes = 1000) {
    return {.bottleneck = false, .blocks = {3, 4, 6, 3}, .classes = classes};
}
inline ResNetConfig resnet50_config(index_t classes = 1000) {
    return {.bottleneck = true, .blocks = {3, 4, 6, 3}, .classes = classes};
}
inline ResNetConfig resnet101_config(index_t classes = 1000) {
    return {.bottleneck = true, .blocks = {3, 4, 23, 3}, .classes = classes};
}

}  // namespace gradcam::models
