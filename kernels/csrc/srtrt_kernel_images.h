/* Internal: the table of compiled kernel images that kernels/aot.py generates. */
#ifndef SRTRT_KERNEL_IMAGES_H
#define SRTRT_KERNEL_IMAGES_H

#include <stddef.h>

typedef struct {
    int dtype;            /* srtrt_dtype */
    int upscale;
    int channels_last;
    int arch;             /* compute capability * 10 + minor, e.g. 90 */
    int is_ptx;           /* 1: NUL-terminated PTX the driver JIT-compiles; 0: cubin for `arch` */
    const unsigned char *data;
    size_t size;
    const char *entry;    /* kernel name */
    int threads;          /* threads per block */
    int shared;           /* dynamic shared memory, bytes */
    int block;            /* output elements per block */
} srtrt_kernel_image;

extern const srtrt_kernel_image srtrt_pixel_shuffle_prelu_images[];
extern const int srtrt_pixel_shuffle_prelu_image_count;

#endif
