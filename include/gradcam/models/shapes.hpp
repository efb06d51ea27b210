// The two networks of the shapes world (data/shapes.hpp), small enough to train in minutes on
// two cores: a VGG-style network with batch norm, and a ResNet-style network with batch norm
// and residual additions; both end in global average pooling + linear, so CAM applies.
#pragma once

#include "gradcam/data/shapes.hpp"
#include "gradcam/models/resnet.hpp"
#include "gradcam/models/vgg.hpp"

namespace gradcam::models {

// 64x64 input: conv16, pool, conv32, pool, conv64, conv64 (each conv with batch norm and ReLU;
// "features.13", 16x16), then global average pooling and one linear layer, as the CAM paper's
// VGGnet-GAP, so CAM applies. (Without batch norm this network does not leave chance level in
// the training budget; with VGG's hidden fully connected layers it sometimes never does.)
inline VggConfig shapes_vgg_config() {
    constexpr int M = VggConfig::max_pool;
    return {.layers = {16, M, 32, M, 64, 64, M},
            .batch_norm = true,
            .in_channels = 3,
            .pooled_size = 1,
            .hidden = {},
            .dropout = 0.0,
            .classes = shapes::class_count};
}

// 64x64 input: 3x3 stem (16 channels) and max pool (32x32), stages of one BasicBlock of widths
// 16, 32, 64 ("layer3", 8x8), global average pooling, fc. (A stride-2 stem instead of the
// pool trains about twice as slowly: it skips over the shapes' edges.)
inline ResNetConfig shapes_resnet_config() {
    return {.bottleneck = false,
            .blocks = {1, 1, 1},
            .widths = {16, 32, 64},
            .in_channels = 3,
            .stem_channels = 16,
            .stem_kernel = 3,
            .stem_stride = 1,
            .stem_max_pool = true,
            .classes = shapes::class_count};
}

}  // namespace gradcam::models
