// avahi's DNS-SD compatibility API (libavahi-compat-libdnssd-dev). It talks to
// avahi-daemon over the system D-Bus.
#include <dns_sd.h>
