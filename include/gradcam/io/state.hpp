// Loading and saving a module's parameters and buffers by state_dict key, as safetensors: the
// format a PyTorch state_dict is exported to with safetensors.torch.save_file.
#pragma once

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "gradcam/io/safetensors.hpp"
#include "gradcam/nn/module.hpp"

namespace gradcam {

// Copies every tensor of `module.state()` from `file`, converting the stored dtype to T (an I64
// num_batches_tracked becomes a scalar T). The file must hold exactly the module's keys with the
// module's shapes: otherwise nothing is copied and one error lists every missing key, every
// unexpected key and every shape difference (lookup_error, or shape_error when only shapes
// differ). Tensors are read one by one straight into the module, so no second copy of the whole
// model is ever in memory.
template <class T>
void load_state(nn::Module<T>& module, const std::filesystem::path& file) {
    const io::SafetensorsFile source(file);
    const auto state = module.state();

    std::vector<std::string> missing, unexpected, reshaped;
    std::set<std::string> expected;
    for (const auto& [key, tensor] : state) {
        expected.insert(key);
        if (!source.contains(key))
            missing.push_back(key);
        else if (const Shape& stored = source.info(key).shape; stored != tensor->shape())
            reshaped.push_back(
                detail::concat(key, ": file ", stored, ", module ", tensor->shape()));
    }
    for (const io::TensorInfo& entry : source.entries())
        if (!expected.contains(entry.key)) unexpected.push_back(entry.key);

    if (!missing.empty() || !unexpected.empty() || !reshaped.empty()) {
        std::string message = detail::concat("load_state: ", io::detail::file_label(file),
                                             " does not match the module: ", missing.size(),
                                             " missing, ", unexpected.size(), " unexpected, ",
                                             reshaped.size(), " with a different shape");
        // At most 20 lines, then a count: a wrong architecture can mismatch hundreds of keys.
        constexpr std::size_t cap = 20;
        std::size_t listed = 0, total = missing.size() + unexpected.size() + reshaped.size();
        auto list = [&](const std::vector<std::string>& items, const char* label) {
            for (const std::string& item : items)
                if (listed < cap) {
                    message += detail::concat("\n  ", label, item);
                    ++listed;
                }
        };
        list(missing, "missing from the file: ");
        list(unexpected, "unexpected in the file: ");
        list(reshaped, "shape differs: ");
        if (total > listed) message += detail::concat("\n  ... and ", total - listed, " more");
        if (missing.empty() && unexpected.empty()) throw shape_error(message);
        throw lookup_error(message);
    }

    for (const auto& [key, tensor] : state)
        if (!io::convertible(source.info(key).dtype))
            throw unsupported_error(
                detail::concat("load_state: ", io::detail::file_label(file), ": tensor '", key,
                               "' has dtype ", io::dtype_name(source.info(key).dtype),
                               ", which gradcam cannot convert; nothing was loaded"));
    for (const auto& [key, tensor] : state) source.read_into(key, *tensor);
}

// Writes `module.state()` to `file` (float as F32, double as F64), readable by load_state and
// by safetensors.torch.load_file.
template <class T>
void save_state(nn::Module<T>& module, const std::filesystem::path& file,
                const io::Metadata& metadata = {}) {
    io::write_safetensors(file, module.state(), metadata);
}

}  // namespace gradcam
