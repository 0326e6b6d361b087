/* Picks the compiled image of the fused pixel-shuffle + PReLU kernel for the current GPU,
 * loads it once with the context-independent cudaLibrary API, and launches it. */
#include "srtrt_kernels.h"
#include "srtrt_kernel_images.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static cudaKernel_t *loaded; /* one slot per image, filled on first use */

static int variant_matches(const srtrt_kernel_image *im, int dtype, int upscale, int channels_last) {
    return im->dtype == dtype && im->upscale == upscale && im->channels_last == (channels_last != 0);
}

/* Best image for compute capability `arch`: its own cubin; else a cubin of the same major
 * version and lower minor (not for sm_90 and up, whose Triton cubins are arch-specific);
 * else the PTX, which the driver JIT-compiles. Returns -1 when none fits. */
static int pick_image(int dtype, int upscale, int channels_last, int arch) {
    int exact = -1, same_major = -1, ptx = -1;
    for (int i = 0; i < srtrt_pixel_shuffle_prelu_image_count; ++i) {
        const srtrt_kernel_image *im = &srtrt_pixel_shuffle_prelu_images[i];
        if (!variant_matches(im, dtype, upscale, channels_last))
            continue;
        if (im->is_ptx) {
            if (im->arch <= arch)
                ptx = i;
        } else if (im->arch == arch) {
            exact = i;
        } else if (im->arch < 90 && im->arch / 10 == arch / 10 && im->arch < arch) {
            if (same_major < 0 || srtrt_pixel_shuffle_prelu_images[same_major].arch < im->arch)
                same_major = i;
        }
    }
    return exact >= 0 ? exact : same_major >= 0 ? same_major : ptx;
}

static cudaError_t load_kernel(int index, cudaKernel_t *kernel) {
    cudaError_t err = cudaSuccess;
    pthread_mutex_lock(&load_lock);
    if (!loaded)
        loaded = calloc((size_t)srtrt_pixel_shuffle_prelu_image_count, sizeof *loaded);
    if (!loaded) {
        err = cudaErrorMemoryAllocation;
    } else if (!loaded[index]) {
        const srtrt_kernel_image *im = &srtrt_pixel_shuffle_prelu_images[index];
        cudaLibrary_t library;
        err = cudaLibraryLoadData(&library, im->data, NULL, NULL, 0, NULL, NULL, 0);
        if (err == cudaSuccess)
            err = cudaLibraryGetKernel(&loaded[index], library, im->entry);
    }
    if (err == cudaSuccess)
        *kernel = loaded[index];
    pthread_mutex_unlock(&load_lock);
    return err;
}

static int current_arch(void) {
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
        return -1;
    return major * 10 + minor;
}

int srtrt_pixel_shuffle_prelu_supported(srtrt_dtype dtype, int upscale, int channels_last,
                                        int cc_major, int cc_minor) {
    return pick_image((int)dtype, upscale, channels_last, cc_major * 10 + cc_minor) >= 0;
}

cudaError_t srtrt_pixel_shuffle_prelu(const void *x, const void *alpha, void *y,
                                      int n, int channels, int height, int width,
                                      int upscale, int alpha_count, srtrt_dtype dtype,
                                      int channels_last, cudaStream_t stream) {
    if (n < 0 || channels <= 0 || height < 0 || width < 0 || upscale < 1 ||
        (alpha_count != 1 && alpha_count != channels))
        return cudaErrorInvalidValue;
    int64_t total64 = (int64_t)n * channels * height * width * upscale * upscale;
    if (total64 >= INT32_MAX)
        return cudaErrorInvalidValue; /* the kernel indexes with 32 bits: split the batch */
    if (total64 == 0)
        return cudaSuccess;

    int arch = current_arch();
    if (arch < 0)
        return cudaErrorNoDevice;
    int index = pick_image((int)dtype, upscale, channels_last, arch);
    if (index < 0)
        return cudaErrorNotSupported;
    cudaKernel_t kernel;
    cudaError_t err = load_kernel(index, &kernel);
    if (err != cudaSuccess)
        return err;

    const srtrt_kernel_image *im = &srtrt_pixel_shuffle_prelu_images[index];
    int total = (int)total64;
    int alpha_stride = alpha_count == 1 ? 0 : 1;
    void *scratch = NULL; /* Triton's global and profile scratch: this kernel needs neither */
    void *args[] = {(void *)&x, (void *)&alpha, &channels, &height, &width, &total, &alpha_stride,
                    &y, &scratch, &scratch};
    dim3 grid = {(unsigned)((total + im->block - 1) / im->block), 1, 1};
    dim3 block = {(unsigned)im->threads, 1, 1};
    return cudaLaunchKernel((const void *)kernel, grid, block, args, (size_t)im->shared, stream);
}
