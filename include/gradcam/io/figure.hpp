// Composing figures: captions under images (lettering from stb_easy_font, scaled up) and grids
// of equally spaced images, for the demo's side-by-side picture.
#pragma once

#include <stb_easy_font.h>

#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "gradcam/io/image.hpp"

namespace gradcam::io {

// Draws `text` with its top-left corner at (x, y), each font unit `scale` pixels, clipped to
// the image.
inline void draw_text(Image& image, int x, int y, const std::string& text,
                      std::array<std::uint8_t, 3> colour, int scale = 2) {
    if (image.channels < 3) throw argument_error("draw_text: the image must be RGB or RGBA");
    std::vector<char> buffer(text.size() * 270 +
                             64);  // stb_easy_font: at most ~270 bytes per character
    std::string copy = text;
    const int quads = stb_easy_font_print(0, 0, copy.data(), nullptr, buffer.data(),
                                          static_cast<int>(buffer.size()));
    for (int q = 0; q < quads; ++q) {
        // Four vertices of 16 bytes: x, y, z as floats, then a colour. Quads are axis-aligned.
        const float* v0 = reinterpret_cast<const float*>(buffer.data() + q * 64);
        const float* v2 = reinterpret_cast<const float*>(buffer.data() + q * 64 + 32);
        const int x0 = x + static_cast<int>(v0[0] * scale),
                  y0 = y + static_cast<int>(v0[1] * scale);
        const int x1 = x + static_cast<int>(v2[0] * scale),
                  y1 = y + static_cast<int>(v2[1] * scale);
        for (int py = std::max(0, y0); py < std::min(image.height, y1); ++py)
            for (int px = std::max(0, x0); px < std::min(image.width, x1); ++px)
                for (int c = 0; c < 3; ++c)
                    image.at(px, py, c) = colour[static_cast<std::size_t>(c)];
    }
}

// `image` above a white strip holding `text` in black, centred.
inline Image with_caption(const Image& image, const std::string& text, int scale = 2) {
    std::string copy = text;
    const int text_width = stb_easy_font_width(copy.data()) * scale;
    const int strip = 12 * scale;
    Image out(std::max(image.width, text_width + 4), image.height + strip, 3, 255);
    const int left = (out.width - image.width) / 2;
    const Image rgb = convert_channels(image, 3);
    for (int y = 0; y < rgb.height; ++y)
        for (int x = 0; x < rgb.width; ++x)
            for (int c = 0; c < 3; ++c) out.at(left + x, y, c) = rgb.at(x, y, c);
    draw_text(out, (out.width - text_width) / 2, image.height + 3 * scale, text, {0, 0, 0}, scale);
    return out;
}

// Images in rows of `columns`, each cell the size of the largest image, on white.
inline Image grid(const std::vector<Image>& images, int columns, int gap = 8) {
    if (images.empty() || columns < 1)
        throw argument_error("grid: no images, or fewer than one column");
    int cell_w = 0, cell_h = 0;
    for (const Image& image : images) {
        cell_w = std::max(cell_w, image.width);
        cell_h = std::max(cell_h, image.height);
    }
    const int count = static_cast<int>(images.size());
    const int rows = (count + columns - 1) / columns, cols = std::min(columns, count);
    Image out(cols * cell_w + (cols + 1) * gap, rows * cell_h + (rows + 1) * gap, 3, 255);
    for (int i = 0; i < count; ++i) {
        const Image rgb = convert_channels(images[static_cast<std::size_t>(i)], 3);
        const int x0 = gap + (i % columns) * (cell_w + gap),
                  y0 = gap + (i / columns) * (cell_h + gap);
        for (int y = 0; y < rgb.height; ++y)
            for (int x = 0; x < rgb.width; ++x)
                for (int c = 0; c < 3; ++c) out.at(x0 + x, y0 + y, c) = rgb.at(x, y, c);
    }
    return out;
}

}  // namespace gradcam::io
