/* One process's wall clock moved by the tests, as an NTP step or `date -s` moves the
 * machine's, while its monotonic clock (and everyone else's clocks) goes on.
 *
 * Preloaded (LD_PRELOAD) with CLOCK_OFFSET_FILE naming a file of 8 bytes: a signed
 * count of nanoseconds, in the machine's byte order, added to every reading of the
 * wall clock. The file is mapped, so a write of it moves the clock at once.
 * libfaketime does this too, but with its monotonic clock left alone it fails every
 * clock_nanosleep (Python's time.sleep) with EINVAL (0.9.10, Debian 12). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const volatile long long *offset_ns;

static long long offset(void)
{
    if (offset_ns == NULL) {
        const char *path = getenv("CLOCK_OFFSET_FILE");
        int fd = path == NULL ? -1 : open(path, O_RDONLY | O_CLOEXEC);
        void *map = fd < 0 ? MAP_FAILED : mmap(NULL, sizeof *offset_ns, PROT_READ, MAP_SHARED,
                                              fd, 0);
        if (map == MAP_FAILED)
            abort(); /* a clock that cannot be moved would make the test prove nothing */
        close(fd);
        offset_ns = map;
    }
    return *offset_ns;
}

int clock_gettime(clockid_t clock, struct timespec *now)
{
    static int (*real)(clockid_t, struct timespec *);
    if (real == NULL)
        real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int result = real(clock, now);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        long long ns = now->tv_sec * 1000000000LL + now->tv_nsec + offset();
        now->tv_sec = ns / 1000000000LL;
        now->tv_nsec = ns % 1000000000LL;
    }
    return result;
}

int gettimeofday(struct timeval *restrict now, void *restrict zone)
{
    struct timespec ts;
    (void)zone;
    clock_gettime(CLOCK_REALTIME, &ts);
    now->tv_sec = ts.tv_sec;
    now->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

time_t time(time_t *now)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (now != NULL)
        *now = ts.tv_sec;
    return ts.tv_sec;
}
