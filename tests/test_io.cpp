// Tests for the I/O layer: safetensors reading, writing and validation, load_state/save_state,
// images (PNG round trip, resize, network input) and the colormap pictures. Reference outputs of
// OpenCV and pytorch-grad-cam come from tests/data/io.safetensors (scripts/make_io_goldens.py).
#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gradcam/io/colormap.hpp"
#include "gradcam/io/image.hpp"
#include "gradcam/io/safetensors.hpp"
#include "gradcam/io/state.hpp"
#include "gradcam/nn/layers.hpp"
#include "gradcam/nn/sequential.hpp"

namespace fs = std::filesystem;
using namespace gradcam;
using io::Image;

namespace {

// A fresh directory under the system temp directory, removed with everything in it at scope exit.
class TempDir {
  public:
    TempDir() {
        static std::atomic<int> counter{0};
        path_ = fs::temp_directory_path() /
                ("gradcam_test_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    fs::path operator/(const std::string& name) const { return path_ / name; }

  private:
    fs::path path_;
};

using Bytes = std::vector<unsigned char>;

void write_bytes(const fs::path& path, const Bytes& bytes) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
}

Bytes read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(in), {});
}

// A safetensors file by hand: the header text as given, then `data`.
void write_raw_safetensors(const fs::path& path, const std::string& header, const Bytes& data) {
    Bytes bytes(8);
    for (int i = 0; i < 8; ++i)
        bytes[static_cast<std::size_t>(i)] = static_cast<unsigned char>(header.size() >> (8 * i));
    bytes.insert(bytes.end(), header.begin(), header.end());
    bytes.insert(bytes.end(), data.begin(), data.end());
    write_bytes(path, bytes);
}

template <class U>
void append_le(Bytes& out, U value) {
    unsigned char raw[sizeof(U)];
    std::memcpy(raw, &value, sizeof(U));  // the test machine is little-endian (x86-64, arm64)
    out.insert(out.end(), raw, raw + sizeof(U));
}

// The what() of the exception E that `f` throws; fails the test when it throws nothing.
template <class E, class F>
std::string error_message(F&& f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    }
    FAIL("expected an exception");
    return {};
}

fs::path golden_path() { return fs::path(GRADCAM_TEST_DATA) / "io.safetensors"; }

const io::SafetensorsFile& golden() {
    static const io::SafetensorsFile file(golden_path());
    return file;
}

// An HWC uint8 golden tensor as an Image.
Image golden_image(const std::string& key) {
    const auto t = golden().read<std::uint8_t>(key);
    REQUIRE(t.rank() == 3);
    Image image(static_cast<int>(t.dim(1)), static_cast<int>(t.dim(0)), static_cast<int>(t.dim(2)));
    std::copy(t.begin(), t.end(), image.pixels.begin());
    return image;
}

// Largest per-byte difference between two images of one size, and how many bytes differ.
std::pair<int, int> compare(const Image& a, const Image& b) {
    REQUIRE(a.width == b.width);
    REQUIRE(a.height == b.height);
    REQUIRE(a.channels == b.channels);
    int worst = 0, count = 0;
    for (std::size_t i = 0; i < a.pixels.size(); ++i) {
        const int d = std::abs(int(a.pixels[i]) - int(b.pixels[i]));
        worst = std::max(worst, d);
        count += d != 0;
    }
    return {worst, count};
}

template <class T>
Tensor<T> iota_tensor(Shape shape, T start, T step) {
    Tensor<T> t(std::move(shape));
    T v = start;
    for (T& x : t) {
        x = v;
        v += step;
    }
    return t;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// safetensors

TEST_CASE_TEMPLATE("io: safetensors write/read round trip", T, float, double) {
    TempDir dir;
    const fs::path file = dir / "round_trip.safetensors";
    std::map<std::string, Tensor<T>> tensors;
    tensors.emplace("scalar", Tensor<T>(Shape{}, T(-2.5)));
    tensors.emplace("vector", iota_tensor<T>(Shape{3}, T(1), T(0.25)));
    tensors.emplace("block.weight", iota_tensor<T>(Shape{2, 3, 4}, T(-3), T(0.125)));
    tensors.emplace("empty", Tensor<T>(Shape{0, 5}));
    tensors.emplace("ones", Tensor<T>(Shape{1, 1, 1, 1}, T(1)));
    io::write_safetensors(file, tensors, {{"format", "pt"}, {"note", "round trip"}});

    // The data starts on an 8-byte boundary.
    const Bytes bytes = read_bytes(file);
    std::uint64_t header_size = 0;
    std::memcpy(&header_size, bytes.data(), 8);
    CHECK(header_size % 8 == 0);

    const io::SafetensorsFile read(file);
    CHECK(read.metadata() == io::Metadata{{"format", "pt"}, {"note", "round trip"}});
    REQUIRE(read.entries().size() == tensors.size());
    auto expected = tensors.begin();
    for (const io::TensorInfo& entry : read.entries()) {  // sorted by key, as the map
        CAPTURE(entry.key);
        CHECK(entry.key == expected->first);
        CHECK(entry.dtype == (std::is_same_v<T, float> ? io::Dtype::f32 : io::Dtype::f64));
        CHECK(entry.shape == expected->second.shape());
        const Tensor<T> back = read.template read<T>(entry.key);
        REQUIRE(back.shape() == expected->second.shape());
        for (index_t i = 0; i < back.size(); ++i) CHECK(back[i] == expected->second[i]);
        ++expected;
    }
    CHECK(read.contains("scalar"));
    CHECK_FALSE(read.contains("scalar2"));

    // read_into fills an existing tensor of the right shape, converting float <-> double.
    Tensor<double> destination(Shape{2, 3, 4});
    read.read_into("block.weight", destination);
    CHECK(destination(1, 2, 3) == doctest::Approx(-3 + 23 * 0.125));

    // The vector-of-pointers form writes the same file.
    const fs::path file2 = dir / "pointers.safetensors";
    std::vector<std::pair<std::string, const Tensor<T>*>> refs;
    for (const auto& [key, t] : tensors) refs.emplace_back(key, &t);
    std::reverse(refs.begin(), refs.end());  // order does not matter: keys are sorted
    io::write_safetensors(file2, refs, {{"format", "pt"}, {"note", "round trip"}});
    CHECK(read_bytes(file2) == bytes);
}

TEST_CASE("io: safetensors converts F64, I64, I32, F16, BF16, U8 and BOOL") {
    TempDir dir;
    const fs::path file = dir / "dtypes.safetensors";
    Bytes data;
    for (double v : {1.5, -2.25, 1e-3}) append_le(data, v);  // f64  [0, 24)
    for (std::int64_t v : {std::int64_t{-7}, std::int64_t{1} << 40})
        append_le(data, v);  // i64 [24, 40)
    // f16: 1, -2, 0.5, 65504 (largest), 2^-24 (smallest subnormal), +inf       [40, 52)
    for (std::uint16_t v : {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x7C00}) append_le(data, v);
    for (std::uint16_t v : {0x3F80, 0xC060}) append_le(data, v);  // bf16 1, -3.5 [52, 56)
    for (std::int32_t v : {-5, 123456}) append_le(data, v);       // i32 [56, 64)
    for (std::uint8_t v : {0, 200, 255}) append_le(data, v);      // u8  [64, 67)
    for (std::uint8_t v : {1, 0}) append_le(data, v);             // bool [67, 69)
    append_le(data, std::uint8_t{0x40});                          // f8  [69, 70)
    write_raw_safetensors(file,
                          R"({"d":{"dtype":"F64","shape":[3],"data_offsets":[0,24]},)"
                          R"("l":{"dtype":"I64","shape":[2],"data_offsets":[24,40]},)"
                          R"("h":{"dtype":"F16","shape":[2,3],"data_offsets":[40,52]},)"
                          R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[52,56]},)"
                          R"("i":{"dtype":"I32","shape":[2],"data_offsets":[56,64]},)"
                          R"("u":{"dtype":"U8","shape":[3],"data_offsets":[64,67]},)"
                          R"("t":{"dtype":"BOOL","shape":[2],"data_offsets":[67,69]},)"
                          R"("e":{"dtype":"F8_E4M3","shape":[],"data_offsets":[69,70]}})",
                          data);
    const io::SafetensorsFile read(file);
    CHECK(read.metadata().empty());
    CHECK(read.info("h").dtype == io::Dtype::f16);

    const auto d = read.read<float>("d");
    CHECK(d[0] == 1.5f);
    CHECK(d[1] == -2.25f);
    CHECK(d[2] == 1e-3f);
    const auto l = read.read<float>("l");
    CHECK(l[0] == -7.0f);
    CHECK(l[1] == 1099511627776.0f);
    CHECK(read.read<std::int64_t>("l")[1] == std::int64_t{1} << 40);
    const auto h = read.read<float>("h");
    CHECK(h.shape() == Shape{2, 3});
    CHECK(h[0] == 1.0f);
    CHECK(h[1] == -2.0f);
    CHECK(h[2] == 0.5f);
    CHECK(h[3] == 65504.0f);
    CHECK(h[4] == 0x1p-24f);
    CHECK(std::isinf(h[5]));
    const auto b = read.read<double>("b");
    CHECK(b[0] == 1.0);
    CHECK(b[1] == -3.5);
    const auto i = read.read<float>("i");
    CHECK(i[0] == -5.0f);
    CHECK(i[1] == 123456.0f);
    const auto u = read.read<float>("u");
    CHECK(u[1] == 200.0f);
    CHECK(u[2] == 255.0f);
    const auto t = read.read<float>("t");
    CHECK(t[0] == 1.0f);
    CHECK(t[1] == 0.0f);

    CHECK_THROWS_WITH_AS(read.read<float>("e"), doctest::Contains("F8_E4M3"), unsupported_error);
}

TEST_CASE("io: safetensors reports every problem with the file and the key") {
    TempDir dir;
    // A valid file to cut and corrupt: one tensor of 6 floats.
    const fs::path good = dir / "good.safetensors";
    io::write_safetensors(
        good, std::map<std::string, Tensor<float>>{{"w", iota_tensor<float>(Shape{2, 3}, 0, 1)}});
    const Bytes bytes = read_bytes(good);
    std::uint64_t header_size = 0;
    std::memcpy(&header_size, bytes.data(), 8);
    const std::string where = (dir / "bad.safetensors").string();
    const fs::path bad = dir / "bad.safetensors";

    SUBCASE("missing file") {
        const fs::path missing = dir / "missing.safetensors";
        REQUIRE_THROWS_AS(io::SafetensorsFile{missing}, io_error);
        const std::string message = error_message<io_error>([&] { io::SafetensorsFile{missing}; });
        CHECK(message.find(missing.string()) != std::string::npos);
        CHECK(message.find("does not exist") != std::string::npos);
    }
    SUBCASE("shorter than the header length") {
        write_bytes(bad, Bytes{1, 2, 3});
        CHECK_THROWS_WITH_AS(io::SafetensorsFile{bad}, doctest::Contains(where.c_str()), io_error);
        CHECK_THROWS_WITH_AS(io::SafetensorsFile{bad}, doctest::Contains("too few"), io_error);
    }
    SUBCASE("header cut short") {
        write_bytes(bad, Bytes(bytes.begin(),
                               bytes.begin() + 8 + static_cast<std::ptrdiff_t>(header_size) / 2));
        CHECK_THROWS_WITH_AS(io::SafetensorsFile{bad}, doctest::Contains("header length"),
                             io_error);
        CHECK_THROWS_WITH_AS(io::SafetensorsFile{bad}, doctest::Contains(where.c_str()), io_error);
    }
    SUBCASE("header length larger than the file") {
        Bytes corrupt = bytes;
        corrupt[5] = 0x7f;  // a header length of about 2^47
        write_bytes(bad, corrupt);
        CHECK_THROWS_WITH_AS(io::SafetensorsFile{bad}, doctest::Contains("exceeds"), io_error);
    }
    SUBCASE("data section cut short") {
        write_bytes(bad, Bytes(bytes.begin(), bytes.end() - 5));
        const std::string message = error_message<io_error>([&] { io::SafetensorsFile{bad}; });
        CHECK(message.find(where) != std::string::npos);
        CHECK(message.find("'w'") != std::string::npos);
        CHECK(message.find("truncated") != std::string::npos);
    }
    SUBCASE("malformed JSON") {
        write_raw_safetensors(bad, R"({"w":{"dtype":"F32",)", Bytes(24));
        CHECK_THROWS_WITH_AS(io::SafetensorsFile{bad}, doctest::Contains("not valid JSON"),
                             io_error);
    }
    SUBCASE("header is not an object") {
        write_raw_safetensors(bad, "[1, 2]  ", Bytes(24));
        CHECK_THROWS_WITH_AS(io::SafetensorsFile{bad}, doctest::Contains("not a JSON object"),
                             io_error);
    }
    SUBCASE("unknown dtype") {
        write_raw_safetensors(bad, R"({"w":{"dtype":"F17","shape":[2,3],"data_offsets":[0,24]}})",
                              Bytes(24));
        const std::string message = error_message<io_error>([&] { io::SafetensorsFile{bad}; });
        CHECK(message.find(where) != std::string::npos);
        CHECK(message.find("tensor 'w'") != std::string::npos);
        CHECK(message.find("unknown dtype 'F17'") != std::string::npos);
    }
    SUBCASE("offsets inconsistent with the shape") {
        write_raw_safetensors(bad, R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})",
                              Bytes(24));
        const std::string message = error_message<io_error>([&] { io::SafetensorsFile{bad}; });
        CHECK(message.find("tensor 'w'") != std::string::npos);
        CHECK(message.find("needs 24") != std::string::npos);
    }
    SUBCASE("negative extent or missing field") {
        write_raw_safetensors(bad, R"({"w":{"dtype":"F32","shape":[-2,3],"data_offsets":[0,24]}})",
                              Bytes(24));
        CHECK_THROWS_WITH_AS(io::SafetensorsFile{bad}, doctest::Contains("non-negative integer"),
                             io_error);
        write_raw_safetensors(bad, R"({"w":{"dtype":"F32","shape":[2,3]}})", Bytes(24));
        CHECK_THROWS_WITH_AS(io::SafetensorsFile{bad}, doctest::Contains("no 'data_offsets'"),
                             io_error);
    }
    SUBCASE("overlapping tensors") {
        write_raw_safetensors(bad,
                              R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                              Bytes(16));
        const std::string message = error_message<io_error>([&] { io::SafetensorsFile{bad}; });
        CHECK(message.find("'a'") != std::string::npos);
        CHECK(message.find("'b'") != std::string::npos);
        CHECK(message.find("overlap") != std::string::npos);
    }
    SUBCASE("metadata that is not strings") {
        write_raw_safetensors(bad, R"({"__metadata__":{"epoch":3}})", {});
        CHECK_THROWS_WITH_AS(io::SafetensorsFile{bad}, doctest::Contains("'epoch'"), io_error);
    }
    SUBCASE("missing key") {
        const io::SafetensorsFile file(good);
        REQUIRE_THROWS_AS(file.read<float>("features.0.weight"), lookup_error);
        const std::string message =
            error_message<lookup_error>([&] { file.read<float>("features.0.weight"); });
        CHECK(message.find("'features.0.weight'") != std::string::npos);
        CHECK(message.find(good.string()) != std::string::npos);
        CHECK(message.find("w") != std::string::npos);  // lists what the file holds
    }
    SUBCASE("read_into with a wrong shape") {
        const io::SafetensorsFile file(good);
        Tensor<float> destination(Shape{3, 2});
        REQUIRE_THROWS_AS(file.read_into("w", destination), shape_error);
        const std::string message =
            error_message<shape_error>([&] { file.read_into("w", destination); });
        CHECK(message.find("'w'") != std::string::npos);
        CHECK(message.find("[2, 3]") != std::string::npos);
        CHECK(message.find("[3, 2]") != std::string::npos);
        CHECK(message.find(good.string()) != std::string::npos);
    }
    SUBCASE("file truncated after the header was read") {
        const fs::path copy = dir / "copy.safetensors";
        fs::copy_file(good, copy);
        const io::SafetensorsFile file(copy);
        write_bytes(copy, Bytes(bytes.begin(), bytes.end() - 5));
        CHECK_THROWS_WITH_AS(file.read<float>("w"), doctest::Contains("ended while reading"),
                             io_error);
    }
    SUBCASE("writing") {
        const std::map<std::string, Tensor<float>> one{{"w", Tensor<float>(Shape{2})}};
        CHECK_THROWS_WITH_AS(io::write_safetensors(dir / "no" / "such" / "dir.safetensors", one),
                             doctest::Contains("directory does not exist"), io_error);
        const Tensor<float> t(Shape{1});
        std::vector<std::pair<std::string, const Tensor<float>*>> twice{{"a", &t}, {"a", &t}};
        CHECK_THROWS_WITH_AS(io::write_safetensors(bad, twice),
                             doctest::Contains("'a' appears twice"), argument_error);
        std::vector<std::pair<std::string, const Tensor<float>*>> reserved{{"__metadata__", &t}};
        CHECK_THROWS_AS(io::write_safetensors(bad, reserved), argument_error);
    }
}

// ---------------------------------------------------------------------------------------------
// load_state / save_state

namespace {

// conv -> batch norm -> relu -> pool -> flatten -> linear: every kind of state a CNN has.
template <class T>
std::unique_ptr<nn::Sequential<T>> small_network(index_t conv_out = 4, index_t classes = 5) {
    auto net = std::make_unique<nn::Sequential<T>>();
    net->template emplace_back<nn::Conv2d<T>>(3, conv_out, Size2(3), Conv2dOptions{});
    net->template emplace_back<nn::BatchNorm2d<T>>(conv_out);
    net->template emplace_back<nn::ReLU<T>>();
    net->template emplace_back<nn::AdaptiveAvgPool2d<T>>(Size2(1));
    net->template emplace_back<nn::Flatten<T>>();
    net->template emplace_back<nn::Linear<T>>(conv_out, classes);
    return net;
}

// Distinct values everywhere, buffers included, so a copy that skips a tensor shows.
template <class T>
void fill_distinct(nn::Module<T>& module, T start) {
    T v = start;
    for (auto& [key, tensor] : module.state())
        for (T& x : *tensor) {
            x = v;
            v += T(0.375);
        }
}

}  // namespace

TEST_CASE("io: save_state then load_state restores every parameter and buffer") {
    TempDir dir;
    const fs::path file = dir / "net.safetensors";
    auto source = small_network<float>();
    fill_distinct(*source, -10.0f);
    gradcam::save_state(*source, file);

    const io::SafetensorsFile saved(file);
    std::vector<std::string> keys;
    for (const auto& e : saved.entries()) keys.push_back(e.key);
    CHECK(keys == std::vector<std::string>{"0.bias", "0.weight", "1.bias", "1.num_batches_tracked",
                                           "1.running_mean", "1.running_var", "1.weight", "5.bias",
                                           "5.weight"});

    auto target = small_network<float>();
    target->initialise(7);
    gradcam::load_state(*target, file);
    auto want = source->state(), got = target->state();
    REQUIRE(want.size() == got.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
        CAPTURE(want[i].first);
        CHECK(max_abs_difference(*want[i].second, *got[i].second) == 0.0f);
    }

    // A double network loads the F32 file, converting.
    auto wide = small_network<double>();
    gradcam::load_state(*wide, file);
    CHECK(wide->tensor("5.weight")(4, 3) == double(source->tensor("5.weight")(4, 3)));
}

TEST_CASE("io: load_state takes PyTorch's I64 num_batches_tracked into a scalar T") {
    TempDir dir;
    const fs::path file = dir / "bn.safetensors";
    Bytes data;
    for (float v : {1.5f, 2.5f}) append_le(data, v);  // weight        [0, 8)
    for (float v : {0.1f, 0.2f}) append_le(data, v);  // bias          [8, 16)
    for (float v : {-1.f, 1.f}) append_le(data, v);   // running_mean  [16, 24)
    for (float v : {4.f, 9.f}) append_le(data, v);    // running_var   [24, 32)
    append_le(data, std::int64_t{1234});              // num_batches_tracked [32, 40)
    write_raw_safetensors(
        file,
        R"({"weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
        R"("bias":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
        R"("running_mean":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},)"
        R"("running_var":{"dtype":"F32","shape":[2],"data_offsets":[24,32]},)"
        R"("num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[32,40]}})",
        data);
    nn::BatchNorm2d<float> bn(2);
    gradcam::load_state(bn, file);
    CHECK(bn.weight()[1] == 2.5f);
    CHECK(bn.running_var()[1] == 9.0f);
    CHECK(bn.tensor("num_batches_tracked").shape() == Shape{});
    CHECK(bn.tensor("num_batches_tracked")[0] == 1234.0f);
}

TEST_CASE("io: load_state lists every missing, unexpected and mis-shaped key at once") {
    TempDir dir;
    const fs::path file = dir / "net.safetensors";
    auto source = small_network<float>(4, 5);
    fill_distinct(*source, 1.0f);
    gradcam::save_state(*source, file);

    SUBCASE("shapes only: shape_error naming both shapes, and nothing copied") {
        auto target = small_network<float>(4, 3);  // the classifier has 3 classes, not 5
        fill_distinct(*target, 100.0f);
        REQUIRE_THROWS_AS(gradcam::load_state(*target, file), shape_error);
        const std::string message =
            error_message<shape_error>([&] { gradcam::load_state(*target, file); });
        CHECK(message.find(file.string()) != std::string::npos);
        CHECK(message.find("5.weight: file [5, 4], module [3, 4]") != std::string::npos);
        CHECK(message.find("5.bias: file [5], module [3]") != std::string::npos);
        CHECK(target->tensor("0.weight")[0] == 100.0f);  // untouched
    }
    SUBCASE("missing and unexpected keys: one lookup_error listing them all") {
        // Another layout: an extra conv in front shifts every index.
        auto target = std::make_unique<nn::Sequential<float>>();
        target->emplace_back<nn::Conv2d<float>>(3, 3, Size2(1), Conv2dOptions{}, false);
        target->emplace_back<nn::Conv2d<float>>(3, 4, Size2(3));
        target->emplace_back<nn::BatchNorm2d<float>>(4);
        REQUIRE_THROWS_AS(gradcam::load_state(*target, file), lookup_error);
        const std::string message =
            error_message<lookup_error>([&] { gradcam::load_state(*target, file); });
        CHECK(message.find(file.string()) != std::string::npos);
        CHECK(message.find("missing from the file: 2.weight") != std::string::npos);
        CHECK(message.find("missing from the file: 2.num_batches_tracked") != std::string::npos);
        CHECK(message.find("unexpected in the file: 5.weight") != std::string::npos);
        CHECK(message.find("unexpected in the file: 1.running_var") != std::string::npos);
        CHECK(message.find("shape differs: 0.weight: file [4, 3, 3, 3], module [3, 3, 1, 1]") !=
              std::string::npos);
        CHECK(message.find("shape differs: 1.weight: file [4], module [4, 3, 3, 3]") !=
              std::string::npos);
    }
    SUBCASE("a long list is capped with a count") {
        auto target = std::make_unique<nn::Sequential<float>>();
        for (int i = 0; i < 6; ++i)
            target->emplace_back<nn::Identity<float>>();  // no state: 0 to 5
        for (int i = 0; i < 15; ++i)
            target->emplace_back<nn::Linear<float>>(2, 2);  // 30 keys, none in the file
        const std::string message =
            error_message<lookup_error>([&] { gradcam::load_state(*target, file); });
        CHECK(message.find("30 missing, 9 unexpected") != std::string::npos);
        CHECK(message.find("... and 19 more") != std::string::npos);
    }
}

// ---------------------------------------------------------------------------------------------
// images

TEST_CASE("io: write_png then read_image gives the same pixels") {
    TempDir dir;
    Image image(5, 3, 3);
    for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 5; ++x)
            for (int c = 0; c < 3; ++c)
                image.at(x, y, c) = static_cast<std::uint8_t>(40 * x + 70 * y + 13 * c);
    const fs::path file = dir / "image.png";
    io::write_png(file, image);
    const Image back = io::read_image(file);
    CHECK(back.width == 5);
    CHECK(back.height == 3);
    CHECK(back.channels == 3);
    CHECK(back.pixels == image.pixels);

    // The same file as RGBA: opaque alpha.
    const Image rgba = io::read_image(file, 4);
    CHECK(rgba.channels == 4);
    CHECK(rgba.at(4, 2, 0) == image.at(4, 2, 0));
    CHECK(rgba.at(4, 2, 3) == 255);

    // Grey and grey+alpha images survive too.
    Image grey(4, 2, 1);
    for (std::size_t i = 0; i < grey.pixels.size(); ++i)
        grey.pixels[i] = static_cast<std::uint8_t>(31 * i);
    io::write_png(dir / "grey.png", grey);
    CHECK(io::read_image(dir / "grey.png", 1).pixels == grey.pixels);

    CHECK_THROWS_AS(image.at(5, 0, 0), shape_error);
}

TEST_CASE("io: unreadable or unwritable images raise io_error naming the file") {
    TempDir dir;
    const fs::path missing = dir / "missing.png";
    REQUIRE_THROWS_AS(io::read_image(missing), io_error);
    CHECK_THROWS_WITH_AS(io::read_image(missing), doctest::Contains(missing.string().c_str()),
                         io_error);
    CHECK_THROWS_WITH_AS(io::read_image(missing), doctest::Contains("does not exist"), io_error);

    const fs::path garbage = dir / "garbage.jpg";
    write_bytes(garbage,
                Bytes{'n', 'o', 't', ' ', 'a', 'n', ' ', 'i', 'm', 'a', 'g', 'e', 0, 1, 2, 3});
    REQUIRE_THROWS_AS(io::read_image(garbage), io_error);
    const std::string message = error_message<io_error>([&] { io::read_image(garbage); });
    CHECK(message.find(garbage.string()) != std::string::npos);
    CHECK(message.find("stb_image says") != std::string::npos);

    CHECK_THROWS_WITH_AS(io::write_png(dir / "no" / "dir" / "out.png", Image(2, 2, 3)),
                         doctest::Contains("out.png"), io_error);
    CHECK_THROWS_AS(io::write_png(dir / "empty.png", Image()), argument_error);
    CHECK_THROWS_AS(io::read_image(garbage, 5), argument_error);
}

TEST_CASE("io: resize matches cv2.resize INTER_LINEAR to within 1") {
    const Image photo = golden_image("photo");
    // OpenCV's uint8 path quantises the weights to 11 bits and, in its SIMD loops, drops 4 more
    // bits before the vertical pass; resize rounds the exact bilinear value. The two differ by at
    // most 1 (a 200-case random sweep against cv2 4.6 found no larger difference).
    struct Case {
        std::string key;
        int width, height;
    };
    // With cv2 4.6: 85 of 663 bytes (resize_up) and 8 of 60 (resize_down) differ by 1.
    for (const Case& c : {Case{"resize_up", 17, 13}, Case{"resize_down", 5, 4}}) {
        CAPTURE(c.key);
        CHECK(compare(io::resize(photo, c.width, c.height), golden_image(c.key)).first <= 1);
    }
    CHECK(io::resize(photo, photo.width, photo.height).pixels == photo.pixels);
    CHECK_THROWS_AS(io::resize(photo, 0, 3), argument_error);

    // Float maps: the same formula as cv2.resize on float32, which has no fixed point.
    const auto mask = golden().read<float>("mask");
    for (const Case& c : {Case{"mask_resize_up", 17, 13}, Case{"mask_resize_down", 5, 4}}) {
        CAPTURE(c.key);
        const auto expected = golden().read<float>(c.key);
        const auto resized = resize_bilinear(mask, c.height, c.width);
        REQUIRE(resized.shape() == expected.shape());
        CHECK(max_abs_difference(resized, expected) < 1e-6f);
    }
    // Leading axes are kept: a batch of maps.
    const auto batch = resize_bilinear(mask.reshaped(Shape{1, 10, 12}), 5, 6);
    CHECK(batch.shape() == Shape{1, 5, 6});
}

TEST_CASE("io: to_input normalises a 2x2 image by hand") {
    Image image(2, 2, 3);
    image.pixels = {0,   128, 255, 10, 20,  30,  //
                    255, 255, 255, 51, 102, 204};
    const Tensor<float> input = io::to_input<float>(image);
    REQUIRE(input.shape() == Shape{1, 3, 2, 2});
    // (p / 255 - mean) / std per channel; [n, c, y, x].
    CHECK(input(0, 0, 0, 0) == doctest::Approx((0 / 255.0 - 0.485) / 0.229).epsilon(1e-6));
    CHECK(input(0, 1, 0, 0) == doctest::Approx((128 / 255.0 - 0.456) / 0.224).epsilon(1e-6));
    CHECK(input(0, 2, 0, 0) == doctest::Approx((255 / 255.0 - 0.406) / 0.225).epsilon(1e-6));
    CHECK(input(0, 0, 0, 1) == doctest::Approx((10 / 255.0 - 0.485) / 0.229).epsilon(1e-6));
    CHECK(input(0, 2, 1, 1) == doctest::Approx((204 / 255.0 - 0.406) / 0.225).epsilon(1e-6));
    CHECK(input(0, 1, 1, 0) == doctest::Approx((1 - 0.456) / 0.224).epsilon(1e-6));

    const Tensor<double> plain = io::to_input<double>(image, io::identity_normalisation);
    CHECK(plain(0, 1, 1, 1) == 102 / 255.0);

    // from_rgb_tensor undoes it.
    CHECK(io::from_rgb_tensor(input, io::imagenet_normalisation).pixels == image.pixels);
    CHECK(io::from_rgb_tensor(plain.reshaped(Shape{3, 2, 2})).pixels == image.pixels);

    const Tensor<float> batch = io::to_batch<float>({image, image});
    CHECK(batch.shape() == Shape{2, 3, 2, 2});
    CHECK(batch(1, 2, 1, 1) == input(0, 2, 1, 1));
    CHECK_THROWS_WITH_AS(io::to_batch<float>({image, Image(3, 2, 3)}),
                         doctest::Contains("image 1 is 3x2"), shape_error);
    CHECK_THROWS_AS(io::to_input<float>(Image(2, 2, 1)), shape_error);
}

TEST_CASE("io: crop and side_by_side compose figures") {
    Image a(3, 2, 3, 10), b(2, 4, 3, 20);
    a.at(2, 1, 0) = 99;
    const Image row = io::side_by_side({a, b}, 1, 255);
    CHECK(row.width == 3 + 1 + 2);
    CHECK(row.height == 4);
    CHECK(row.at(0, 0, 0) == 10);
    CHECK(row.at(2, 1, 0) == 99);
    CHECK(row.at(3, 0, 1) == 255);  // the gap
    CHECK(row.at(0, 3, 2) == 255);  // below the shorter image (tops aligned)
    CHECK(row.at(4, 3, 0) == 20);

    const Image piece = io::crop(row, 2, 1, 3, 2);
    CHECK(piece.width == 3);
    CHECK(piece.at(0, 0, 0) == 99);
    CHECK(piece.at(2, 1, 0) == 20);
    CHECK_THROWS_AS(io::crop(row, 4, 0, 3, 1), argument_error);

    // A grey image joins colour ones as grey colour.
    const Image mixed = io::side_by_side({Image(1, 1, 1, 77), a}, 0);
    CHECK(mixed.channels == 3);
    CHECK(mixed.at(0, 0, 2) == 77);
}

// ---------------------------------------------------------------------------------------------
// colormap pictures

TEST_CASE("io: jet equals cv2.COLORMAP_JET for all 256 levels") {
    const auto lut = golden().read<std::uint8_t>("jet_lut");
    REQUIRE(lut.shape() == Shape{256, 3});
    int wrong = 0;
    for (int level = 0; level < 256; ++level) {
        const io::Rgb colour = io::jet(static_cast<std::uint8_t>(level));
        for (int c = 0; c < 3; ++c) {
            CAPTURE(level);
            CAPTURE(c);
            CHECK(colour[static_cast<std::size_t>(c)] == lut(level, c));
            wrong += colour[static_cast<std::size_t>(c)] != lut(level, c);
        }
    }
    CHECK(wrong == 0);

    // apply_jet maps a value v to level trunc(255 * v), clamped.
    const Tensor<float> map(Shape{1, 5}, {-0.5f, 0.0f, 0.5f, 0.999f, 2.0f});
    const Image picture = io::apply_jet(map);
    CHECK(picture.width == 5);
    CHECK(picture.height == 1);
    const int levels[] = {0, 0, 127, 254, 255};
    for (int x = 0; x < 5; ++x)
        for (int c = 0; c < 3; ++c) CHECK(picture.at(x, 0, c) == lut(levels[x], c));

    const Image grey = io::grayscale_image(map);
    CHECK(grey.channels == 1);
    CHECK(grey.pixels == std::vector<std::uint8_t>{0, 0, 127, 254, 255});
    CHECK_THROWS_AS(io::apply_jet(Tensor<float>(Shape{2, 2, 2})), shape_error);
}

TEST_CASE("io: overlay equals pytorch-grad-cam's show_cam_on_image") {
    const Image photo = golden_image("photo");
    const auto mask = golden().read<float>("mask");
    // Exact: the float32 steps of numpy are repeated one by one, without FMA.
    CHECK(compare(io::overlay(photo, mask, 0.5f), golden_image("overlay_0.5")).first == 0);
    CHECK(compare(io::overlay(photo, mask, 0.3f), golden_image("overlay_0.3")).first == 0);
    CHECK(compare(io::overlay(photo, mask), golden_image("overlay_0.5")).first == 0);

    REQUIRE_THROWS_AS(io::overlay(photo, Tensor<float>(Shape{12, 10})), shape_error);
    CHECK_THROWS_WITH_AS(io::overlay(photo, Tensor<float>(Shape{12, 10})),
                         doctest::Contains("[12, 10]"), shape_error);
    CHECK_THROWS_WITH_AS(io::overlay(photo, Tensor<float>(Shape{12, 10})),
                         doctest::Contains("[10, 12]"), shape_error);
    CHECK_THROWS_AS(io::overlay(photo, mask, 1.5f), argument_error);
    // With resize_bilinear first, any map size works.
    CHECK(io::overlay(photo, resize_bilinear(Tensor<float>(Shape{3, 4}, 0.25f), 10, 12)).width ==
          12);
}

TEST_CASE("io: saliency_image equals pytorch-grad-cam's deprocess_image") {
    const auto gradient = golden().read<float>("gradient");
    const Image expected = golden_image("saliency");
    // numpy takes the mean and std in float32 (pairwise sums), saliency_image in double: the
    // statistics can differ in the last bit, which could move a byte by 1 for another gradient.
    // For this one the float path agrees exactly; the double path is allowed the 1.
    CHECK(compare(io::saliency_image(gradient), expected).first == 0);
    CHECK(compare(io::saliency_image(gradient.reshaped(Shape{1, 3, 10, 12})), expected).first == 0);
    CHECK(compare(io::saliency_image(gradient.cast<double>()), expected).first <= 1);
    CHECK_THROWS_AS(io::saliency_image(Tensor<float>(Shape{2, 10, 12})), shape_error);
}
