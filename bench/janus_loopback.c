/* LD_PRELOAD shim for the media bench's Janus reference (bench/janus.py).
 *
 * Janus gathers ICE host candidates from getifaddrs() and skips every interface flagged
 * IFF_LOOPBACK (src/ice.c, janus_ice_setup_local), so on its own it can only be reached on a
 * LAN address. The bench keeps all traffic on 127.0.0.1: this shim clears IFF_LOOPBACK in what
 * getifaddrs() returns to Janus, and the generated janus.jcfg's ice_enforce_list keeps
 * 127.0.0.1 as the only address Janus gathers. Nothing else changes: the kernel path of every
 * packet is the same loopback path the expertcall server uses.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stddef.h>

int getifaddrs(struct ifaddrs **ifap) {
    static int (*real)(struct ifaddrs **);
    if (!real)
        real = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    int result = real(ifap);
    if (result == 0)
        for (struct ifaddrs *i = *ifap; i != NULL; i = i->ifa_next)
            i->ifa_flags &= ~IFF_LOOPBACK;
    return result;
}
