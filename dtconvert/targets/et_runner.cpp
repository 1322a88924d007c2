// dtconvert's torch-free ExecuTorch runner: the C++ runtime the phone apps link, with no Python.
//
//   et_runner MODEL.pte INPUT.f32 COUNT C H W OUTPUT.f32
//
// Runs the program's "forward" once per image (batch 1, as exported) on COUNT float32 images of
// shape C×H×W read from INPUT.f32, and writes every output tensor's float32 values, image after
// image, to OUTPUT.f32. Prints the output shape. Exit 2: bad arguments or input; 1: the runtime
// failed (its error code printed). Built by dtconvert/targets/arm64.py, for x86-64 and for arm64,
// against the libraries and headers of the executorch wheel.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <vector>

using executorch::extension::from_blob;
using executorch::extension::module::Module;

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: et_runner MODEL.pte INPUT.f32 COUNT C H W OUTPUT.f32\n");
    return 2;
  }
  const long count = std::atol(argv[3]);
  const int c = std::atoi(argv[4]), h = std::atoi(argv[5]), w = std::atoi(argv[6]);
  if (count <= 0 || c <= 0 || h <= 0 || w <= 0) {
    std::fprintf(stderr, "COUNT, C, H and W must be positive\n");
    return 2;
  }
  const size_t per_image = static_cast<size_t>(c) * h * w;
  std::vector<float> input(per_image * count);
  std::ifstream in(argv[2], std::ios::binary);
  in.read(reinterpret_cast<char*>(input.data()), static_cast<std::streamsize>(input.size() * sizeof(float)));
  if (!in) {
    std::fprintf(stderr, "%s: fewer than %ld images of %dx%dx%d float32\n", argv[2], count, c, h, w);
    return 2;
  }
  Module module(argv[1]);
  std::ofstream out(argv[7], std::ios::binary);
  for (long i = 0; i < count; ++i) {
    auto tensor = from_blob(input.data() + i * per_image, {1, c, h, w});
    auto result = module.forward(tensor);
    if (!result.ok()) {
      std::fprintf(stderr, "%s: forward failed on image %ld (ExecuTorch error 0x%x)\n", argv[1], i, static_cast<int>(result.error()));
      return 1;
    }
    const auto& output = result->at(0).toTensor();
    out.write(reinterpret_cast<const char*>(output.const_data_ptr<float>()), static_cast<std::streamsize>(output.numel() * sizeof(float)));
    if (i == 0) {
      std::printf("output");
      for (int d = 0; d < output.dim(); ++d) std::printf(" %d", static_cast<int>(output.size(d)));
      std::printf("\n");
    }
  }
  return out ? 0 : 1;
}
