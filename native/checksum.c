/* Internet checksum, RFC 1071 / RFC 1624.  See slirpnet.h for the contract. */
#include <string.h>
#include "slirpnet.h"

static inline uint32_t fold64(uint64_t s)
{
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffffffu) + (s >> 32);
    return (uint32_t)s;
}

uint32_t sn_csum_partial(const uint8_t *buf, size_t len, uint32_t sum)
{
    /* Sum 32-bit big-endian words into a 64-bit accumulator: for the
     * one's-complement sum the word size only has to be a multiple of 16. */
    uint64_t acc = sum;
    while (len >= 32) {
        uint32_t w[8];
        memcpy(w, buf, 32);
        acc += (uint64_t)__builtin_bswap32(w[0]) + __builtin_bswap32(w[1])
             + __builtin_bswap32(w[2]) + __builtin_bswap32(w[3])
             + __builtin_bswap32(w[4]) + __builtin_bswap32(w[5])
             + __builtin_bswap32(w[6]) + __builtin_bswap32(w[7]);
        buf += 32;
        len -= 32;
    }
    while (len >= 4) {
        uint32_t w;
        memcpy(&w, buf, 4);
        acc += __builtin_bswap32(w);
        buf += 4;
        len -= 4;
    }
    if (len >= 2) {
        acc += ((uint32_t)buf[0] << 8) | buf[1];
        buf += 2;
        len -= 2;
    }
    if (len)
        acc += (uint32_t)buf[0] << 8;
    /* Fold to 32 bits, then 32 -> 17 bits so that callers can keep adding. */
    uint32_t s = fold64(acc);
    return (s & 0xffff) + (s >> 16);
}

uint16_t sn_csum_fold(uint32_t sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

uint16_t sn_checksum(const uint8_t *buf, size_t len, uint32_t sum)
{
    return (uint16_t)~sn_csum_fold(sn_csum_partial(buf, len, sum));
}

uint32_t sn_pseudo_sum_v4(const uint8_t *src4, const uint8_t *dst4,
                          uint8_t proto, uint32_t l4_len)
{
    uint32_t s = sn_csum_partial(src4, 4, 0);
    s = sn_csum_partial(dst4, 4, s);
    uint64_t acc = (uint64_t)s + proto + (l4_len >> 16) + (l4_len & 0xffff);
    return sn_csum_fold(fold64(acc));
}

uint32_t sn_pseudo_sum_v6(const uint8_t *src16, const uint8_t *dst16,
                          uint8_t next_header, uint32_t l4_len)
{
    uint32_t s = sn_csum_partial(src16, 16, 0);
    s = sn_csum_partial(dst16, 16, s);
    uint64_t acc = (uint64_t)s + next_header + (l4_len >> 16) + (l4_len & 0xffff);
    return sn_csum_fold(fold64(acc));
}

uint16_t sn_csum_update16(uint16_t csum, uint16_t old_word, uint16_t new_word)
{
    uint32_t s = (uint16_t)~csum;
    s += (uint16_t)~old_word;
    s += new_word;
    return (uint16_t)~sn_csum_fold(s);
}

uint16_t sn_csum_update32(uint16_t csum, uint32_t old_word, uint32_t new_word)
{
    uint32_t s = (uint16_t)~csum;
    s += (uint16_t)~(old_word >> 16);
    s += (uint16_t)~(old_word & 0xffff);
    s += new_word >> 16;
    s += new_word & 0xffff;
    return (uint16_t)~sn_csum_fold(s);
}
