/*
 * Test scaffolding, not agent code: an LD_PRELOAD shim giving loop device
 * partitions the HDIO_GETGEO answer a real disk driver gives.
 *
 * GRUB 2.06 (Debian bookworm) finds where a partition starts with the
 * HDIO_GETGEO ioctl, or from device-mapper.  The loop driver has no
 * getgeo, and this test machine's kernel has no device-mapper, so
 * grub-install cannot place itself on a loop device ("cannot find a GRUB
 * drive").  When the kernel answers ENOTTY for a partition, this shim
 * answers instead with the start sector the kernel itself publishes in
 * /sys/dev/block/MAJ:MIN/start.  Everything else passes through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/hdreg.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

typedef int (*ioctl_fn)(int, unsigned long, ...);

int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    static ioctl_fn real;
    if (!real)
        real = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
    int rc = real(fd, request, arg);
    if (rc == 0 || request != HDIO_GETGEO || errno != ENOTTY)
        return rc;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISBLK(st.st_mode))
        return rc;
    char path[64];
    snprintf(path, sizeof path, "/sys/dev/block/%u:%u/start",
             major(st.st_rdev), minor(st.st_rdev));
    FILE *f = fopen(path, "r");
    if (!f) {
        errno = ENOTTY;
        return rc;
    }
    unsigned long start = 0;
    int ok = fscanf(f, "%lu", &start) == 1;
    fclose(f);
    if (!ok) {
        errno = ENOTTY;
        return rc;
    }
    struct hd_geometry *geo = arg;
    geo->heads = 255;
    geo->sectors = 63;
    geo->cylinders = 0;
    geo->start = start;
    return 0;
}
