// 8-bit images: reading (PNG, JPEG, BMP, ... through stb_image), writing PNG, bilinear resizing
// with OpenCV's and PyTorch's half-pixel convention, conversion to a normalised NCHW network
// input, and the crops and side-by-side layouts used to compose figures.
#pragma once

#include <stb_image.h>
#include <stb_image_write.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "gradcam/interpolate.hpp"
#include "gradcam/tensor.hpp"

namespace gradcam::io {

namespace detail {
using gradcam::detail::concat;  // io::detail would otherwise hide it
}  // namespace detail

// Pixels in rows from the top, each pixel `channels` bytes (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).
struct Image {
    int width = 0, height = 0, channels = 0;
    std::vector<std::uint8_t> pixels;  // height * width * channels, HWC

    Image() = default;
    // A width x height image with every byte `fill`.
    Image(int image_width, int image_height, int image_channels, std::uint8_t fill = 0)
        : width(image_width), height(image_height), channels(image_channels) {
        if (width < 0 || height < 0 || channels < 1 || channels > 4)
            throw argument_error(
                detail::concat("Image: invalid size ", width, "x", height, " with ", channels,
                               " channels (width and height >= 0, 1 to 4 channels)"));
        pixels.assign(static_cast<std::size_t>(width) * static_cast<std::size_t>(height) *
                          static_cast<std::size_t>(channels),
                      fill);
    }

    bool empty() const { return width == 0 || height == 0; }

    // The channel `c` of the pixel in column `x`, row `y`, checked.
    std::uint8_t& at(int x, int y, int c) { return pixels[offset(x, y, c)]; }
    std::uint8_t at(int x, int y, int c) const { return pixels[offset(x, y, c)]; }

  private:
    std::size_t offset(int x, int y, int c) const {
        if (x < 0 || x >= width || y < 0 || y >= height || c < 0 || c >= channels)
            throw shape_error(detail::concat("Image::at(", x, ", ", y, ", ", c, ") is outside a ",
                                             width, "x", height, " image with ", channels,
                                             " channels"));
        return (static_cast<std::size_t>(y) * static_cast<std::size_t>(width) +
                static_cast<std::size_t>(x)) *
                   static_cast<std::size_t>(channels) +
               static_cast<std::size_t>(c);
    }
};

// Reads an image file and converts it to `channels` channels (3: RGB).
inline Image read_image(const std::filesystem::path& path, int channels = 3) {
    if (channels < 1 || channels > 4)
        throw argument_error(detail::concat("read_image: ", channels, " channels requested for '",
                                            path.string(),
                                            "'; choose 1 (grey), 2, 3 (RGB) or 4 (RGBA)"));
    int width = 0, height = 0, stored_channels = 0;
    stbi_uc* data = stbi_load(path.string().c_str(), &width, &height, &stored_channels, channels);
    if (!data) {
        const char* reason = stbi_failure_reason();
        std::error_code ec;
        const bool exists = std::filesystem::exists(path, ec);
        throw io_error(detail::concat("read_image: cannot read '", path.string(),
                                      "': ", exists ? "" : "the file does not exist; ",
                                      "stb_image says '", reason ? reason : "unknown error", "'"));
    }
    Image image;
    image.width = width;
    image.height = height;
    image.channels = channels;
    image.pixels.assign(data, data + static_cast<std::size_t>(width) *
                                         static_cast<std::size_t>(height) *
                                         static_cast<std::size_t>(channels));
    stbi_image_free(data);
    return image;
}

// Writes `image` as PNG. The directory must exist.
inline void write_png(const std::filesystem::path& path, const Image& image) {
    if (image.empty() || image.channels < 1 || image.channels > 4 ||
        image.pixels.size() != static_cast<std::size_t>(image.width) *
                                   static_cast<std::size_t>(image.height) *
                                   static_cast<std::size_t>(image.channels))
        throw argument_error(detail::concat("write_png '", path.string(), "': the image (",
                                            image.width, "x", image.height, ", ", image.channels,
                                            " channels, ", image.pixels.size(),
                                            " bytes) is empty or inconsistent"));
    const int ok = stbi_write_png(path.string().c_str(), image.width, image.height, image.channels,
                                  image.pixels.data(), image.width * image.channels);
    if (!ok) {
        std::error_code ec;
        const auto directory =
            path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
        throw io_error(detail::concat(
            "write_png: cannot write '", path.string(), "'",
            std::filesystem::is_directory(directory, ec) ? "" : " (its directory does not exist)"));
    }
}

namespace detail {

inline void check_image(const Image& image, const char* op) {
    if (image.empty() || image.pixels.size() != static_cast<std::size_t>(image.width) *
                                                    static_cast<std::size_t>(image.height) *
                                                    static_cast<std::size_t>(image.channels))
        throw argument_error(concat(op, ": the image (", image.width, "x", image.height, ", ",
                                    image.channels, " channels, ", image.pixels.size(),
                                    " bytes) is empty or inconsistent"));
}

}  // namespace detail

// Bilinear resize to width x height, half-pixel centres, rounded to the nearest byte. Matches
// cv2.resize(..., interpolation=INTER_LINEAR) to within 1 (OpenCV rounds its weights to 11 bits).
inline Image resize(const Image& image, int width, int height) {
    detail::check_image(image, "resize");
    if (width < 1 || height < 1)
        throw argument_error(
            detail::concat("resize: target size ", width, "x", height, " must be at least 1x1"));
    const gradcam::detail::LinearTaps xs = gradcam::detail::linear_taps(image.width, width);
    const gradcam::detail::LinearTaps ys = gradcam::detail::linear_taps(image.height, height);
    Image out(width, height, image.channels);
    const auto c_count = static_cast<std::size_t>(image.channels);
    const auto row = static_cast<std::size_t>(image.width) * c_count;
    std::size_t o = 0;
    for (std::size_t y = 0; y < ys.lo.size(); ++y)
        for (std::size_t x = 0; x < xs.lo.size(); ++x)
            for (std::size_t c = 0; c < c_count; ++c) {
                auto pixel = [&](index_t yy, index_t xx) {
                    return static_cast<double>(
                        image.pixels[static_cast<std::size_t>(yy) * row +
                                     static_cast<std::size_t>(xx) * c_count + c]);
                };
                const double fx = xs.frac[x], fy = ys.frac[y];
                const double top =
                    (1 - fx) * pixel(ys.lo[y], xs.lo[x]) + fx * pixel(ys.lo[y], xs.hi[x]);
                const double bottom =
                    (1 - fx) * pixel(ys.hi[y], xs.lo[x]) + fx * pixel(ys.hi[y], xs.hi[x]);
                const double value = (1 - fy) * top + fy * bottom;
                out.pixels[o++] =
                    static_cast<std::uint8_t>(std::clamp(std::floor(value + 0.5), 0.0, 255.0));
            }
    return out;
}

// Per-channel mean and standard deviation applied as (pixel / 255 - mean) / std.
struct Normalisation {
    std::array<float, 3> mean, std;
};

// torchvision's ImageNet statistics, which the pretrained VGG and ResNet weights expect.
inline constexpr Normalisation imagenet_normalisation{{0.485f, 0.456f, 0.406f},
                                                      {0.229f, 0.224f, 0.225f}};
// Only the scaling to [0, 1].
inline constexpr Normalisation identity_normalisation{{0.f, 0.f, 0.f}, {1.f, 1.f, 1.f}};

// A batch [N, 3, H, W] of normalised RGB images, all of one size.
template <class T>
Tensor<T> to_batch(const std::vector<Image>& images,
                   const Normalisation& normalisation = imagenet_normalisation) {
    if (images.empty()) throw argument_error("to_batch: no images given");
    for (std::size_t c = 0; c < 3; ++c)
        if (!(normalisation.std[c] > 0))
            throw argument_error(detail::concat("to_batch: normalisation std[", c,
                                                "] = ", normalisation.std[c], " is not positive"));
    const Image& first = images.front();
    for (std::size_t n = 0; n < images.size(); ++n) {
        detail::check_image(images[n], "to_batch");
        if (images[n].channels != 3)
            throw shape_error(
                detail::concat("to_batch: image ", n, " has ", images[n].channels,
                               " channels; network inputs are RGB (read_image(path, 3))"));
        if (images[n].width != first.width || images[n].height != first.height)
            throw shape_error(detail::concat("to_batch: image ", n, " is ", images[n].width, "x",
                                             images[n].height, " but image 0 is ", first.width, "x",
                                             first.height, "; resize them to one size first"));
    }
    const index_t h = first.height, w = first.width;
    Tensor<T> out = Tensor<T>::uninitialized(Shape{static_cast<index_t>(images.size()), 3, h, w});
    T* o = out.data();
    for (const Image& image : images)
        for (std::size_t c = 0; c < 3; ++c) {
            const T mean = static_cast<T>(normalisation.mean[c]),
                    deviation = static_cast<T>(normalisation.std[c]);
            for (index_t i = 0; i < h * w; ++i)
                *o++ = (static_cast<T>(image.pixels[static_cast<std::size_t>(i) * 3 + c]) / T(255) -
                        mean) /
                       deviation;
        }
    return out;
}

// One normalised RGB image as a network input [1, 3, H, W].
template <class T>
Tensor<T> to_input(const Image& image,
                   const Normalisation& normalisation = imagenet_normalisation) {
    return to_batch<T>(std::vector<Image>{image}, normalisation);
}

// The inverse of to_input: an RGB image from [3, H, W] or [1, 3, H, W], undoing `normalisation`,
// clamping to [0, 1] and rounding 255 * value to the nearest byte.
template <class T>
Image from_rgb_tensor(const Tensor<T>& tensor,
                      const Normalisation& normalisation = identity_normalisation) {
    const Shape& s = tensor.shape();
    const bool chw = s.rank() == 3 && s[0] == 3, nchw = s.rank() == 4 && s[0] == 1 && s[1] == 3;
    if (!chw && !nchw)
        throw shape_error(
            detail::concat("from_rgb_tensor: expected shape [3, H, W] or [1, 3, H, W], got ", s));
    const index_t h = s.dim(-2), w = s.dim(-1);
    Image out(static_cast<int>(w), static_cast<int>(h), 3);
    for (std::size_t c = 0; c < 3; ++c)
        for (index_t i = 0; i < h * w; ++i) {
            const double v = static_cast<double>(tensor[static_cast<index_t>(c) * h * w + i]) *
                                 normalisation.std[c] +
                             normalisation.mean[c];
            out.pixels[static_cast<std::size_t>(i) * 3 + c] =
                static_cast<std::uint8_t>(std::floor(std::clamp(v, 0.0, 1.0) * 255 + 0.5));
        }
    return out;
}

// The same pixels with `channels` channels: grey is replicated, alpha dropped or set opaque.
inline Image convert_channels(const Image& image, int channels) {
    detail::check_image(image, "convert_channels");
    if (channels < 1 || channels > 4)
        throw argument_error(
            detail::concat("convert_channels: ", channels, " channels requested; choose 1 to 4"));
    if (channels == image.channels) return image;
    Image out(image.width, image.height, channels);
    const bool in_colour = image.channels >= 3,
               in_alpha = image.channels == 2 || image.channels == 4;
    const bool out_colour = channels >= 3, out_alpha = channels == 2 || channels == 4;
    const std::size_t count =
        static_cast<std::size_t>(image.width) * static_cast<std::size_t>(image.height);
    for (std::size_t i = 0; i < count; ++i) {
        const std::uint8_t* p = image.pixels.data() + i * static_cast<std::size_t>(image.channels);
        std::uint8_t* q = out.pixels.data() + i * static_cast<std::size_t>(channels);
        if (out_colour)
            for (int c = 0; c < 3; ++c) q[c] = in_colour ? p[c] : p[0];
        else  // ITU-R BT.601 luma, as OpenCV's and PIL's RGB to grey
            q[0] = in_colour ? static_cast<std::uint8_t>(
                                   std::lround(0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]))
                             : p[0];
        if (out_alpha) q[channels - 1] = in_alpha ? p[image.channels - 1] : 255;
    }
    return out;
}

// The width x height rectangle whose top-left pixel is (x, y); it must lie inside the image.
inline Image crop(const Image& image, int x, int y, int width, int height) {
    detail::check_image(image, "crop");
    if (x < 0 || y < 0 || width < 1 || height < 1 || x + width > image.width ||
        y + height > image.height)
        throw argument_error(detail::concat("crop: the ", width, "x", height, " rectangle at (", x,
                                            ", ", y, ") does not fit in the ", image.width, "x",
                                            image.height, " image"));
    Image out(width, height, image.channels);
    const auto c = static_cast<std::size_t>(image.channels);
    for (int row = 0; row < height; ++row)
        std::copy_n(
            image.pixels.begin() +
                static_cast<std::ptrdiff_t>(
                    ((static_cast<std::size_t>(y + row) * static_cast<std::size_t>(image.width)) +
                     static_cast<std::size_t>(x)) *
                    c),
            static_cast<std::size_t>(width) * c,
            out.pixels.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(row) *
                                                             static_cast<std::size_t>(width) * c));
    return out;
}

// The images left to right, tops aligned, `gap` pixels apart, on a `background` grey. Images with
// different channel counts are converted to the largest count first.
inline Image side_by_side(const std::vector<Image>& images, int gap = 4,
                          std::uint8_t background = 255) {
    if (images.empty()) throw argument_error("side_by_side: no images given");
    if (gap < 0) throw argument_error(detail::concat("side_by_side: gap ", gap, " is negative"));
    int width = gap * static_cast<int>(images.size() - 1), height = 0, channels = 0;
    for (const Image& image : images) {
        detail::check_image(image, "side_by_side");
        width += image.width;
        height = std::max(height, image.height);
        channels = std::max(channels, image.channels);
    }
    Image out(width, height, channels, background);
    if (channels == 2 || channels == 4)  // an opaque background
        for (std::size_t i = static_cast<std::size_t>(channels) - 1; i < out.pixels.size();
             i += static_cast<std::size_t>(channels))
            out.pixels[i] = 255;
    int left = 0;
    for (const Image& original : images) {
        const Image image =
            original.channels == channels ? original : convert_channels(original, channels);
        const auto row_bytes =
            static_cast<std::size_t>(image.width) * static_cast<std::size_t>(channels);
        for (int y = 0; y < image.height; ++y)
            std::copy_n(image.pixels.begin() +
                            static_cast<std::ptrdiff_t>(static_cast<std::size_t>(y) * row_bytes),
                        row_bytes,
                        out.pixels.begin() +
                            static_cast<std::ptrdiff_t>(
                                (static_cast<std::size_t>(y) * static_cast<std::size_t>(width) +
                                 static_cast<std::size_t>(left)) *
                                static_cast<std::size_t>(channels)));
        left += image.width + gap;
    }
    return out;
}

}  // namespace gradcam::io
