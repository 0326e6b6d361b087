/* libsrtrt_kernels: the fused pixel-shuffle + PReLU kernel for C/C++ deployments.
 *
 * The kernel images are Triton output compiled ahead of time (see kernels/aot.py); this
 * library only picks the image for the current GPU and launches it, so neither Python nor
 * Triton is needed at run time. Link with cudart.
 */
#ifndef SRTRT_KERNELS_H
#define SRTRT_KERNELS_H

#include <cuda_runtime_api.h>

#if defined(_WIN32)
#define SRTRT_API __declspec(dllexport)
#else
#define SRTRT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Element types; the numbers match DTYPE_CODES in kernels/aot.py. */
typedef enum { SRTRT_FP32 = 0, SRTRT_FP16 = 1, SRTRT_BF16 = 2 } srtrt_dtype;

/* y = PReLU(PixelShuffle(upscale)(x)), DepthToSpace CRD order (as torch.nn.PixelShuffle).
 *
 * x:      device pointer, (n, channels*upscale*upscale, height, width), NCHW contiguous
 * alpha:  device pointer, `channels` slopes, or one slope shared by all channels (alpha_count 1)
 * y:      device pointer, (n, channels, height*upscale, width*upscale), NCHW contiguous, or
 *         NHWC (channels_last) when channels_last != 0
 * All three have element type `dtype`; the launch is asynchronous on `stream`.
 * Returns cudaSuccess, cudaErrorInvalidValue for bad sizes, or cudaErrorNotSupported when
 * no compiled image fits (dtype, upscale, layout) on this GPU.
 */
SRTRT_API cudaError_t srtrt_pixel_shuffle_prelu(const void *x, const void *alpha, void *y,
                                                int n, int channels, int height, int width,
                                                int upscale, int alpha_count, srtrt_dtype dtype,
                                                int channels_last, cudaStream_t stream);

/* Whether an image for (dtype, upscale, channels_last) exists for compute capability
 * major.minor (the library was built with a fixed set of variants). */
SRTRT_API int srtrt_pixel_shuffle_prelu_supported(srtrt_dtype dtype, int upscale, int channels_last,
                                                  int cc_major, int cc_minor);

#ifdef __cplusplus
}
#endif
#endif
