// The one translation unit that compiles stb_image and stb_image_write (Debian's libstb-dev
// headers) for gradcam's examples, tests and benchmarks.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_write.h>
