// The safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes of
// JSON describing each tensor (dtype, shape, byte range), then the raw little-endian data.
// Reading validates the header once and then seeks to one tensor at a time, so a 550 MB weights
// file is never held in memory whole.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gradcam/tensor.hpp"

namespace gradcam::io {

namespace detail {
using gradcam::detail::concat;  // io::detail would otherwise hide it
}  // namespace detail

enum class Dtype {
    boolean,
    u8,
    i8,
    u16,
    i16,
    u32,
    i32,
    u64,
    i64,
    f16,
    bf16,
    f32,
    f64,
    f8_e4m3,
    f8_e5m2
};

// The dtype's name in a safetensors header ("F32").
inline std::string_view dtype_name(Dtype dtype) {
    switch (dtype) {
        case Dtype::boolean:
            return "BOOL";
        case Dtype::u8:
            return "U8";
        case Dtype::i8:
            return "I8";
        case Dtype::u16:
            return "U16";
        case Dtype::i16:
            return "I16";
        case Dtype::u32:
            return "U32";
        case Dtype::i32:
            return "I32";
        case Dtype::u64:
            return "U64";
        case Dtype::i64:
            return "I64";
        case Dtype::f16:
            return "F16";
        case Dtype::bf16:
            return "BF16";
        case Dtype::f32:
            return "F32";
        case Dtype::f64:
            return "F64";
        case Dtype::f8_e4m3:
            return "F8_E4M3";
        case Dtype::f8_e5m2:
            return "F8_E5M2";
    }
    return "?";
}

// Bytes per element.
inline std::size_t dtype_size(Dtype dtype) {
    switch (dtype) {
        case Dtype::boolean:
        case Dtype::u8:
        case Dtype::i8:
        case Dtype::f8_e4m3:
        case Dtype::f8_e5m2:
            return 1;
        case Dtype::u16:
        case Dtype::i16:
        case Dtype::f16:
        case Dtype::bf16:
            return 2;
        case Dtype::u32:
        case Dtype::i32:
        case Dtype::f32:
            return 4;
        case Dtype::u64:
        case Dtype::i64:
        case Dtype::f64:
            return 8;
    }
    return 0;
}

// The dtype named `name`, or false when the name is not a safetensors dtype.
inline bool parse_dtype(std::string_view name, Dtype& dtype) {
    for (Dtype d : {Dtype::boolean, Dtype::u8, Dtype::i8, Dtype::u16, Dtype::i16, Dtype::u32,
                    Dtype::i32, Dtype::u64, Dtype::i64, Dtype::f16, Dtype::bf16, Dtype::f32,
                    Dtype::f64, Dtype::f8_e4m3, Dtype::f8_e5m2})
        if (dtype_name(d) == name) {
            dtype = d;
            return true;
        }
    return false;
}

// The dtype a Tensor<T> is written as.
template <class T>
constexpr Dtype dtype_of() {
    if constexpr (std::is_same_v<T, bool>)
        return Dtype::boolean;
    else if constexpr (std::is_floating_point_v<T>) {
        static_assert(sizeof(T) == 4 || sizeof(T) == 8,
                      "only float and double have a safetensors dtype");
        return sizeof(T) == 4 ? Dtype::f32 : Dtype::f64;
    } else {
        static_assert(sizeof(T) <= 8);
        constexpr bool is_signed = std::is_signed_v<T>;
        if constexpr (sizeof(T) == 1)
            return is_signed ? Dtype::i8 : Dtype::u8;
        else if constexpr (sizeof(T) == 2)
            return is_signed ? Dtype::i16 : Dtype::u16;
        else if constexpr (sizeof(T) == 4)
            return is_signed ? Dtype::i32 : Dtype::u32;
        else
            return is_signed ? Dtype::i64 : Dtype::u64;
    }
}

// One tensor as the header describes it; `begin` and `end` are byte offsets into the data
// section, which starts right after the header.
struct TensorInfo {
    std::string key;
    Dtype dtype;
    Shape shape;
    std::uint64_t begin = 0, end = 0;
};

using Metadata = std::map<std::string, std::string>;

namespace detail {

inline std::string file_label(const std::filesystem::path& path) {
    return concat("'", path.string(), "'");
}

// A list of keys for a message, capped so a 500-tensor file does not flood the terminal.
template <class Range, class Key>
std::string key_list(const Range& range, Key key_of, std::size_t cap = 20) {
    std::string out;
    std::size_t count = 0;
    for (const auto& item : range) {
        if (count < cap) out += (count ? ", " : "") + key_of(item);
        ++count;
    }
    if (count > cap) out += detail::concat(", ... (", count - cap, " more)");
    return out.empty() ? "(none)" : out;
}

// IEEE binary16 to float: exact, including subnormals, infinities and NaN.
inline float half_to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exponent = (h >> 10) & 0x1fu;
    const std::uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0) {
        // Zero or subnormal: mantissa * 2^-24, exact in float.
        const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
    return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// bfloat16 is the top half of a float.
inline float bfloat16_to_float(std::uint16_t b) {
    return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

template <class U>
U load_little_endian(const unsigned char* bytes) {
    using Bits = std::conditional_t<
        sizeof(U) == 1, std::uint8_t,
        std::conditional_t<sizeof(U) == 2, std::uint16_t,
                           std::conditional_t<sizeof(U) == 4, std::uint32_t, std::uint64_t>>>;
    Bits bits = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i)
        bits = static_cast<Bits>(bits | (static_cast<Bits>(bytes[i]) << (8 * i)));
    return std::bit_cast<U>(bits);
}

template <class U>
void store_little_endian(U value, unsigned char* bytes) {
    using Bits = std::conditional_t<
        sizeof(U) == 1, std::uint8_t,
        std::conditional_t<sizeof(U) == 2, std::uint16_t,
                           std::conditional_t<sizeof(U) == 4, std::uint32_t, std::uint64_t>>>;
    const Bits bits = std::bit_cast<Bits>(value);
    for (std::size_t i = 0; i < sizeof(U); ++i)
        bytes[i] = static_cast<unsigned char>(bits >> (8 * i));
}

// Converts `count` stored elements of dtype `dtype` to T.
template <class T>
void decode(Dtype dtype, const unsigned char* bytes, std::size_t count, T* out) {
    auto each = [&](auto load) {
        const std::size_t size = dtype_size(dtype);
        for (std::size_t i = 0; i < count; ++i) out[i] = static_cast<T>(load(bytes + i * size));
    };
    switch (dtype) {
        case Dtype::boolean:
            each([](const unsigned char* b) { return *b != 0; });
            break;
        case Dtype::u8:
            each([](const unsigned char* b) { return load_little_endian<std::uint8_t>(b); });
            break;
        case Dtype::i8:
            each([](const unsigned char* b) { return load_little_endian<std::int8_t>(b); });
            break;
        case Dtype::u16:
            each([](const unsigned char* b) { return load_little_endian<std::uint16_t>(b); });
            break;
        case Dtype::i16:
            each([](const unsigned char* b) { return load_little_endian<std::int16_t>(b); });
            break;
        case Dtype::u32:
            each([](const unsigned char* b) { return load_little_endian<std::uint32_t>(b); });
            break;
        case Dtype::i32:
            each([](const unsigned char* b) { return load_little_endian<std::int32_t>(b); });
            break;
        case Dtype::u64:
            each([](const unsigned char* b) { return load_little_endian<std::uint64_t>(b); });
            break;
        case Dtype::i64:
            each([](const unsigned char* b) { return load_little_endian<std::int64_t>(b); });
            break;
        case Dtype::f16:
            each([](const unsigned char* b) {
                return half_to_float(load_little_endian<std::uint16_t>(b));
            });
            break;
        case Dtype::bf16:
            each([](const unsigned char* b) {
                return bfloat16_to_float(load_little_endian<std::uint16_t>(b));
            });
            break;
        case Dtype::f32:
            each([](const unsigned char* b) { return load_little_endian<float>(b); });
            break;
        case Dtype::f64:
            each([](const unsigned char* b) { return load_little_endian<double>(b); });
            break;
        case Dtype::f8_e4m3:
        case Dtype::f8_e5m2:
            GRADCAM_ASSERT(false);
            break;  // rejected before reading
    }
}

// The non-negative integer `value` as u64, or false.
inline bool as_u64(const nlohmann::json& value, std::uint64_t& out) {
    if (!value.is_number_unsigned()) return false;
    out = value.get<std::uint64_t>();
    return true;
}

}  // namespace detail

// Can read() convert this dtype to a number? (The 8-bit float formats, not yet.)
inline bool convertible(Dtype dtype) { return dtype != Dtype::f8_e4m3 && dtype != Dtype::f8_e5m2; }

// A safetensors file whose header has been read and checked. Tensors are read on demand.
class SafetensorsFile {
  public:
    explicit SafetensorsFile(std::filesystem::path path) : path_(std::move(path)) { read_header(); }

    const std::filesystem::path& path() const { return path_; }

    // Every tensor, sorted by key.
    const std::vector<TensorInfo>& entries() const { return entries_; }
    // The "__metadata__" map (empty when the file has none).
    const Metadata& metadata() const { return metadata_; }

    bool contains(std::string_view key) const { return find(key) != nullptr; }

    // The header's description of `key`; lookup_error when the file has no such tensor.
    const TensorInfo& info(std::string_view key) const {
        if (const TensorInfo* entry = find(key)) return *entry;
        throw lookup_error(detail::concat(
            "safetensors ", detail::file_label(path_), ": no tensor '", key, "'; the file holds ",
            entries_.size(),
            " tensors: ", detail::key_list(entries_, [](const TensorInfo& e) { return e.key; })));
    }

    // The tensor `key`, converted to T.
    template <class T>
    Tensor<T> read(std::string_view key) const {
        const TensorInfo& entry = info(key);
        Tensor<T> out = Tensor<T>::uninitialized(entry.shape);
        read_data(entry, out);
        return out;
    }

    // Reads `key` into `destination`, whose shape must match the stored shape exactly.
    template <class T>
    void read_into(std::string_view key, Tensor<T>& destination) const {
        const TensorInfo& entry = info(key);
        if (entry.shape != destination.shape())
            throw shape_error(detail::concat(
                "safetensors ", detail::file_label(path_), ": tensor '", key, "' has shape ",
                entry.shape, " in the file but the destination has shape ", destination.shape()));
        read_data(entry, destination);
    }

  private:
    const TensorInfo* find(std::string_view key) const {
        auto it =
            std::lower_bound(entries_.begin(), entries_.end(), key,
                             [](const TensorInfo& e, std::string_view k) { return e.key < k; });
        return it != entries_.end() && it->key == key ? &*it : nullptr;
    }

    template <class... Parts>
    [[noreturn]] void fail(const Parts&... parts) const {
        throw io_error(detail::concat("safetensors ", detail::file_label(path_), ": ", parts...));
    }

    std::ifstream open() const {
        std::error_code ec;
        if (!std::filesystem::exists(path_, ec)) fail("the file does not exist");
        if (std::filesystem::is_directory(path_, ec)) fail("is a directory, not a file");
        std::ifstream in(path_, std::ios::binary);
        if (!in) fail("the file cannot be opened for reading");
        return in;
    }

    void read_header() {
        std::ifstream in = open();
        in.seekg(0, std::ios::end);
        const auto end = in.tellg();
        if (end < 0) fail("cannot determine the file size");
        const auto file_size = static_cast<std::uint64_t>(end);
        in.seekg(0);
        if (file_size < 8)
            fail("the file has ", file_size, " bytes, too few for the 8-byte header length");

        unsigned char length_bytes[8];
        in.read(reinterpret_cast<char*>(length_bytes), 8);
        if (!in) fail("cannot read the header length");
        const auto header_size = detail::load_little_endian<std::uint64_t>(length_bytes);
        // The format caps the header at 100 MB; anything bigger is a corrupt or foreign file.
        constexpr std::uint64_t max_header = 100'000'000;
        if (header_size > file_size - 8)
            fail("the header length ", header_size, " exceeds the ", file_size - 8,
                 " bytes that follow it (truncated file, or not a safetensors file)");
        if (header_size > max_header)
            fail("the header length ", header_size, " exceeds the 100 MB limit");

        std::string text(static_cast<std::size_t>(header_size), '\0');
        in.read(text.data(), static_cast<std::streamsize>(header_size));
        if (!in) fail("cannot read the ", header_size, "-byte header");
        data_start_ = 8 + header_size;
        const std::uint64_t data_size = file_size - data_start_;

        nlohmann::json header;
        try {
            header = nlohmann::json::parse(text);
        } catch (const nlohmann::json::exception& e) {
            fail("the header is not valid JSON: ", e.what());
        }
        if (!header.is_object()) fail("the header is not a JSON object");

        for (auto& [key, value] : header.items()) {
            if (key == "__metadata__") {
                read_metadata(value);
                continue;
            }
            entries_.push_back(parse_entry(key, value, data_size));
        }
        std::sort(entries_.begin(), entries_.end(),
                  [](const TensorInfo& a, const TensorInfo& b) { return a.key < b.key; });

        // Byte ranges must not overlap (empty tensors occupy nothing).
        std::vector<const TensorInfo*> by_offset;
        for (const TensorInfo& e : entries_)
            if (e.end > e.begin) by_offset.push_back(&e);
        std::sort(by_offset.begin(), by_offset.end(),
                  [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
        for (std::size_t i = 1; i < by_offset.size(); ++i)
            if (by_offset[i]->begin < by_offset[i - 1]->end)
                fail("tensors '", by_offset[i - 1]->key, "' [", by_offset[i - 1]->begin, ", ",
                     by_offset[i - 1]->end, ") and '", by_offset[i]->key, "' [",
                     by_offset[i]->begin, ", ", by_offset[i]->end, ") overlap");
    }

    void read_metadata(const nlohmann::json& value) {
        if (!value.is_object()) fail("'__metadata__' is not a JSON object");
        for (auto& [name, text] : value.items()) {
            if (!text.is_string()) fail("'__metadata__' entry '", name, "' is not a string");
            metadata_[name] = text.get<std::string>();
        }
    }

    TensorInfo parse_entry(const std::string& key, const nlohmann::json& value,
                           std::uint64_t data_size) const {
        auto bad = [&](const auto&... parts) { fail("tensor '", key, "': ", parts...); };
        if (!value.is_object()) bad("the entry is not a JSON object");
        for (const char* field : {"dtype", "shape", "data_offsets"})
            if (!value.contains(field)) bad("the entry has no '", field, "'");

        TensorInfo entry;
        entry.key = key;
        const auto& dtype = value["dtype"];
        if (!dtype.is_string()) bad("'dtype' is not a string");
        if (!parse_dtype(dtype.get<std::string>(), entry.dtype))
            bad("unknown dtype '", dtype.get<std::string>(), "'");

        const auto& shape = value["shape"];
        if (!shape.is_array()) bad("'shape' is not an array");
        std::vector<index_t> dims;
        std::uint64_t numel = 1;
        for (const auto& d : shape) {
            std::uint64_t extent = 0;
            if (!detail::as_u64(d, extent) ||
                extent > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max()))
                bad("'shape' ", shape.dump(), " holds something other than a non-negative integer");
            if (extent != 0 && numel > std::numeric_limits<std::uint64_t>::max() / extent)
                bad("'shape' ", shape.dump(), " has too many elements");
            numel *= extent;
            dims.push_back(static_cast<index_t>(extent));
        }
        entry.shape = Shape(std::move(dims));

        const auto& offsets = value["data_offsets"];
        if (!offsets.is_array() || offsets.size() != 2 ||
            !detail::as_u64(offsets[0], entry.begin) || !detail::as_u64(offsets[1], entry.end))
            bad("'data_offsets' ", offsets.dump(), " is not a pair of non-negative integers");
        if (entry.end < entry.begin)
            bad("'data_offsets' [", entry.begin, ", ", entry.end, "] end before they begin");
        const std::uint64_t size = dtype_size(entry.dtype);
        if (numel > std::numeric_limits<std::uint64_t>::max() / size)
            bad("shape ", entry.shape, " has too many elements");
        if (entry.end - entry.begin != numel * size)
            bad("'data_offsets' [", entry.begin, ", ", entry.end, "] span ",
                entry.end - entry.begin, " bytes but shape ", entry.shape, " of ",
                dtype_name(entry.dtype), " needs ", numel * size);
        if (entry.end > data_size)
            bad("'data_offsets' [", entry.begin, ", ", entry.end,
                "] reach past the end of the data section (", data_size,
                " bytes): the file is truncated");
        return entry;
    }

    template <class T>
    void read_data(const TensorInfo& entry, Tensor<T>& out) const {
        if (!convertible(entry.dtype))
            throw unsupported_error(detail::concat(
                "safetensors ", detail::file_label(path_), ": tensor '", entry.key, "' has dtype ",
                dtype_name(entry.dtype), ", which gradcam cannot convert"));
        const std::uint64_t bytes = entry.end - entry.begin;
        if (bytes == 0) return;
        std::ifstream in = open();
        in.seekg(static_cast<std::streamoff>(data_start_ + entry.begin));
        auto check = [&](std::uint64_t wanted) {
            if (!in || static_cast<std::uint64_t>(in.gcount()) != wanted)
                fail("tensor '", entry.key,
                     "': the file ended while reading its data (was it changed or truncated?)");
        };
        if (std::endian::native == std::endian::little && entry.dtype == dtype_of_or_none<T>()) {
            // Same representation: straight into the destination, no staging copy.
            in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(bytes));
            check(bytes);
            return;
        }
        // Otherwise convert in 1 MiB pieces, so the staging buffer stays small whatever the tensor.
        const std::size_t element = dtype_size(entry.dtype);
        const std::size_t chunk_elements = (std::size_t{1} << 20) / element;
        std::vector<unsigned char> buffer(chunk_elements * element);
        const auto total = static_cast<std::size_t>(bytes / element);
        for (std::size_t done = 0; done < total;) {
            const std::size_t count = std::min(chunk_elements, total - done);
            in.read(reinterpret_cast<char*>(buffer.data()),
                    static_cast<std::streamsize>(count * element));
            check(count * element);
            detail::decode(entry.dtype, buffer.data(), count, out.data() + done);
            done += count;
        }
    }

    // The stored dtype with T's representation, or f8_e4m3 (never matched) when there is none.
    template <class T>
    static constexpr Dtype dtype_of_or_none() {
        if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, long double>)
            return Dtype::f8_e4m3;
        else
            return dtype_of<T>();
    }

    std::filesystem::path path_;
    std::uint64_t data_start_ = 0;
    std::vector<TensorInfo> entries_;
    Metadata metadata_;
};

namespace detail {

template <class T>
void write_safetensors_sorted(const std::filesystem::path& path,
                              std::vector<std::pair<std::string, const Tensor<T>*>> entries,
                              const Metadata& metadata) {
    std::sort(entries.begin(), entries.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    for (std::size_t i = 0; i < entries.size(); ++i) {
        if (entries[i].first == "__metadata__")
            throw argument_error(
                detail::concat("write_safetensors ", file_label(path),
                               ": '__metadata__' is reserved and cannot name a tensor"));
        if (entries[i].second == nullptr)
            throw argument_error(detail::concat("write_safetensors ", file_label(path),
                                                ": tensor '", entries[i].first,
                                                "' is a null pointer"));
        if (i && entries[i].first == entries[i - 1].first)
            throw argument_error(detail::concat("write_safetensors ", file_label(path), ": key '",
                                                entries[i].first, "' appears twice"));
    }

    constexpr Dtype dtype = dtype_of<T>();
    nlohmann::json header = nlohmann::json::object();
    std::uint64_t offset = 0;
    for (const auto& [key, tensor] : entries) {
        const std::uint64_t bytes = static_cast<std::uint64_t>(tensor->size()) * sizeof(T);
        nlohmann::json entry = nlohmann::json::object();
        entry["dtype"] = std::string(dtype_name(dtype));
        entry["shape"] = tensor->shape().dims();
        entry["data_offsets"] = nlohmann::json::array({offset, offset + bytes});
        header[key] = std::move(entry);
        offset += bytes;
    }
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::string text = header.dump();
    // Pad with spaces so the data starts on an 8-byte boundary, as the reference writer does.
    text.append((8 - text.size() % 8) % 8, ' ');

    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    auto fail = [&] {
        std::error_code ec;
        const bool directory_exists = std::filesystem::is_directory(
            path.parent_path().empty() ? "." : path.parent_path(), ec);
        throw io_error(detail::concat("write_safetensors: cannot write ", file_label(path),
                                      directory_exists ? "" : " (its directory does not exist)"));
    };
    if (!out) fail();
    unsigned char length[8];
    store_little_endian<std::uint64_t>(text.size(), length);
    out.write(reinterpret_cast<const char*>(length), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [key, tensor] : entries) {
        if (tensor->empty()) continue;
        if constexpr (std::endian::native == std::endian::little && !std::is_same_v<T, bool>) {
            out.write(reinterpret_cast<const char*>(tensor->data()),
                      static_cast<std::streamsize>(tensor->size() * sizeof(T)));
        } else {
            std::vector<unsigned char> bytes(static_cast<std::size_t>(tensor->size()) *
                                             dtype_size(dtype));
            for (index_t i = 0; i < tensor->size(); ++i) {
                if constexpr (std::is_same_v<T, bool>)
                    bytes[static_cast<std::size_t>(i)] = (*tensor)[i] ? 1 : 0;
                else
                    store_little_endian<T>((*tensor)[i],
                                           bytes.data() + static_cast<std::size_t>(i) * sizeof(T));
            }
            out.write(reinterpret_cast<const char*>(bytes.data()),
                      static_cast<std::streamsize>(bytes.size()));
        }
        if (!out) fail();
    }
    out.close();
    if (!out) fail();
}

}  // namespace detail

// Writes `entries` (key, tensor) to `path` as safetensors: float as F32, double as F64, keys
// sorted. Throws argument_error for a duplicate or reserved key, io_error when the file cannot
// be written.
template <class T>
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, const Tensor<T>*>>& entries,
                       const Metadata& metadata = {}) {
    detail::write_safetensors_sorted<T>(path, entries, metadata);
}

// The same for a list of mutable tensors, as nn::Module::state() gives.
template <class T>
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, Tensor<T>*>>& entries,
                       const Metadata& metadata = {}) {
    detail::write_safetensors_sorted<T>(path, {entries.begin(), entries.end()}, metadata);
}

template <class T>
void write_safetensors(const std::filesystem::path& path,
                       const std::map<std::string, Tensor<T>>& entries,
                       const Metadata& metadata = {}) {
    std::vector<std::pair<std::string, const Tensor<T>*>> refs;
    for (const auto& [key, tensor] : entries) refs.emplace_back(key, &tensor);
    detail::write_safetensors_sorted<T>(path, std::move(refs), metadata);
}

}  // namespace gradcam::io
