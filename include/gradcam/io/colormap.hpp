// Pictures of explanation maps: the jet colormap exactly as OpenCV's COLORMAP_JET, a heatmap
// blended over a photo (pytorch-grad-cam's show_cam_on_image), a gradient shown as an image
// (its deprocess_image), and plain grey maps.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <utility>

#include "gradcam/io/image.hpp"

namespace gradcam::io {

namespace detail {
using gradcam::detail::concat;  // io::detail would otherwise hide it
}  // namespace detail

using Rgb = std::array<std::uint8_t, 3>;

namespace detail {

// Jet (GNU Octave's jet.m): each channel is a trapezoid in x = level / 255, clipped to [0, 1]:
// 1.5 - |4x - centre| with centre 3 for red, 2 for green, 1 for blue.
inline double jet_channel(double x, double centre) {
    return std::clamp(1.5 - std::abs(4 * x - centre), 0.0, 1.0);
}

// OpenCV does not use the formula directly. It stores the formula's 256 values as float, then
// "interpolates" that table at its own float breakpoints x_i = i * (1.0f / 255) (linspace), which
// is the identity up to float rounding, and converts 255 * y to a byte with round-half-even. On
// every sloping part 255 * y is exactly k + 1/2, so the float rounding of that interpolation
// decides which way each tie goes (e.g. blue at level 159 is 1, not 2). Repeating the same float
// steps reproduces OpenCV's table byte for byte (checked against cv2 for all 256 levels in
// tests/test_io.cpp).
inline std::array<Rgb, 256> make_jet_table() {
    std::array<Rgb, 256> table{};
    std::array<float, 256> x{};
    const float step = 1.0f / 255.0f;
    for (int i = 0; i < 256; ++i) x[static_cast<std::size_t>(i)] = static_cast<float>(i) * step;
    for (std::size_t channel = 0; channel < 3; ++channel) {
        const double centre = 3.0 - static_cast<double>(channel);
        std::array<float, 256> y{};
        for (int i = 0; i < 256; ++i)
            y[static_cast<std::size_t>(i)] = static_cast<float>(jet_channel(i / 255.0, centre));
        for (std::size_t i = 0; i < 256; ++i) {
            // The bracketing breakpoints OpenCV's interp1 finds for x_i: (i - 1, i), or (0, 1) at
            // 0.
            const std::size_t low = i ? i - 1 : 0, high = i ? i : 1;
            const float value = y[low] + (x[i] - x[low]) * (y[high] - y[low]) / (x[high] - x[low]);
            const float scaled = value * 255.0f;
            table[i][channel] =
                static_cast<std::uint8_t>(std::clamp(std::nearbyint(scaled), 0.0f, 255.0f));
        }
    }
    return table;
}

// a * b rounded once to T. For float the product is formed exactly in double and then rounded,
// so the compiler cannot fuse it with a following addition into an FMA: numpy rounds every
// operation, and byte-exact agreement with it depends on doing the same.
template <class T>
T rounded_product(T a, T b) {
    if constexpr (std::is_same_v<T, float>)
        return static_cast<float>(static_cast<double>(a) * static_cast<double>(b));
    else
        return a * b;
}

// The colormap level of v: the truncation of 255 * v after clamping to [0, 1], as
// np.uint8(255 * map). NaN counts as 0.
template <class T>
std::uint8_t level_of(T v) {
    if (!(v > T(0))) return 0;
    if (v >= T(1)) return 255;
    return static_cast<std::uint8_t>(T(255) * v);
}

// The (height, width) of a map [H, W], also accepting leading axes of extent 1 ([1, H, W]).
inline std::pair<index_t, index_t> map_extent(const Shape& shape, const char* op) {
    bool ok = shape.rank() >= 2;
    for (index_t axis = 0; ok && axis + 2 < shape.rank(); ++axis) ok = shape[axis] == 1;
    if (!ok)
        throw shape_error(
            concat(op, ": expected a map of shape [H, W] (or [1, H, W]), got ", shape));
    return {shape.dim(-2), shape.dim(-1)};
}

}  // namespace detail

// OpenCV's COLORMAP_JET table as RGB, indexed by level 0..255.
inline const std::array<Rgb, 256>& jet_table() {
    static const std::array<Rgb, 256> table = detail::make_jet_table();
    return table;
}

// The jet colour of one level.
inline Rgb jet(std::uint8_t level) { return jet_table()[level]; }

// A map [H, W] with values in [0, 1] as an RGB jet image: the colours
// cv2.applyColorMap(np.uint8(255 * map), cv2.COLORMAP_JET) gives, converted from BGR to RGB.
template <class T>
Image apply_jet(const Tensor<T>& map) {
    const auto [h, w] = detail::map_extent(map.shape(), "apply_jet");
    Image out(static_cast<int>(w), static_cast<int>(h), 3);
    const auto& table = jet_table();
    for (index_t i = 0; i < h * w; ++i) {
        const Rgb& colour = table[detail::level_of(map[i])];
        std::copy(colour.begin(), colour.end(),
                  out.pixels.begin() + static_cast<std::ptrdiff_t>(i * 3));
    }
    return out;
}

// A map [H, W] with values in [0, 1] as a one-channel grey image (truncating, as apply_jet).
template <class T>
Image grayscale_image(const Tensor<T>& map) {
    const auto [h, w] = detail::map_extent(map.shape(), "grayscale_image");
    Image out(static_cast<int>(w), static_cast<int>(h), 1);
    for (index_t i = 0; i < h * w; ++i)
        out.pixels[static_cast<std::size_t>(i)] = detail::level_of(map[i]);
    return out;
}

// The jet heatmap of `map` blended over `photo`, with the arithmetic of pytorch-grad-cam's
// show_cam_on_image(photo / 255, map, use_rgb=True, image_weight): in float,
// cam = (1 - image_weight) * jet(map) / 255 + image_weight * photo / 255, cam /= max(cam),
// byte = truncation of 255 * cam. The map must have the photo's size (see resize_bilinear).
template <class T>
Image overlay(const Image& photo, const Tensor<T>& map, float image_weight = 0.5f) {
    detail::check_image(photo, "overlay");
    if (!(image_weight >= 0 && image_weight <= 1))
        throw argument_error(
            detail::concat("overlay: image_weight ", image_weight, " is outside [0, 1]"));
    const auto [h, w] = detail::map_extent(map.shape(), "overlay");
    if (h != photo.height || w != photo.width)
        throw shape_error(detail::concat(
            "overlay: the map has shape ", map.shape(), " but the photo is ", photo.width, "x",
            photo.height, ", so the map needs shape [", photo.height, ", ", photo.width,
            "]; resize it with resize_bilinear(map, ", photo.height, ", ", photo.width, ")"));
    const Image rgb = photo.channels == 3 ? photo : convert_channels(photo, 3);
    // numpy evaluates (1 - image_weight) in double and then uses it as float32.
    const float heat_weight = static_cast<float>(1.0 - static_cast<double>(image_weight));
    const auto& table = jet_table();
    std::vector<float> cam(rgb.pixels.size());
    float largest = 0;
    for (std::size_t i = 0; i < cam.size(); ++i) {
        const float heat =
            static_cast<float>(table[detail::level_of(map[static_cast<index_t>(i / 3)])][i % 3]) /
            255.0f;
        const float pixel = static_cast<float>(rgb.pixels[i]) / 255.0f;
        cam[i] = detail::rounded_product(heat_weight, heat) +
                 detail::rounded_product(image_weight, pixel);
        largest = std::max(largest, cam[i]);
    }
    Image out(rgb.width, rgb.height, 3);
    if (largest > 0)
        for (std::size_t i = 0; i < cam.size(); ++i)
            out.pixels[i] =
                static_cast<std::uint8_t>(std::min(255.0f * (cam[i] / largest), 255.0f));
    return out;
}

// A gradient [3, H, W] (or [1, 3, H, W]) as an RGB image, as pytorch-grad-cam's deprocess_image:
// g = (g - mean) / (std + 1e-5) (population std over all values), g = 0.1 * g + 0.5, clipped to
// [0, 1], byte = truncation of 255 * g. Used to show guided backpropagation. The gradient is
// first divided by its largest magnitude: input gradients can be far smaller than the 1e-5,
// which would flatten them to grey; for gradients of ordinary size this changes little.
template <class T>
Image saliency_image(Tensor<T> gradient) {
    const Shape& s = gradient.shape();
    const bool chw = s.rank() == 3 && s[0] == 3, nchw = s.rank() == 4 && s[0] == 1 && s[1] == 3;
    if (!chw && !nchw)
        throw shape_error(detail::concat(
            "saliency_image: expected a gradient of shape [3, H, W] or [1, 3, H, W], got ", s));
    const index_t h = s.dim(-2), w = s.dim(-1), plane = h * w;
    if (plane == 0)
        throw shape_error(detail::concat("saliency_image: the gradient of shape ", s, " is empty"));

    const T largest = max_abs(gradient);
    if (largest > 0)
        for (T& v : gradient) v /= largest;
    // Statistics in double; numpy forms them in float32 with pairwise sums, which can differ in
    // the last bit and so, rarely, move a byte by 1.
    double sum = 0;
    for (T v : gradient) sum += static_cast<double>(v);
    const double mean = sum / static_cast<double>(gradient.size());
    double squares = 0;
    for (T v : gradient)
        squares += (static_cast<double>(v) - mean) * (static_cast<double>(v) - mean);
    const T deviation = static_cast<T>(std::sqrt(squares / static_cast<double>(gradient.size())));
    // numpy: float32 std + 1e-5 is a double, used as float32 when dividing the float32 array.
    const T denominator = static_cast<T>(static_cast<double>(deviation) + 1e-5);
    const T centre = static_cast<T>(mean);

    Image out(static_cast<int>(w), static_cast<int>(h), 3);
    for (index_t c = 0; c < 3; ++c)
        for (index_t i = 0; i < plane; ++i) {
            T v = (gradient[c * plane + i] - centre) / denominator;
            v = detail::rounded_product(v, static_cast<T>(0.1)) + static_cast<T>(0.5);
            v = std::clamp(v, T(0), T(1));
            out.pixels[static_cast<std::size_t>(i * 3 + c)] = static_cast<std::uint8_t>(T(255) * v);
        }
    return out;
}

}  // namespace gradcam::io
