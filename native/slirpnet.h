/*
 * slirpnet native ABI: this header is the whole interface between Python and C.
 *
 * Calls are coarse (a buffer, a batch), never per field; C never calls back
 * into Python and never allocates Python objects.  Every function here has a
 * pure-Python twin (netstack/wire/checksum.py for the checksum family) that is
 * the oracle in the parity tests.
 *
 * Checksums (RFC 1071).  A "partial sum" is the unfolded 32-bit sum of
 * big-endian 16-bit words; an odd trailing byte counts as the high byte of a
 * word.  Partial sums chain (sum of A then B) only when A has even length.
 * sn_csum_fold() folds to 16 bits WITHOUT inverting, which is what a
 * virtio-net NEEDS_CSUM frame carries in its checksum field as the seed;
 * sn_checksum() is the inverted value that goes on the wire.
 */
#ifndef SLIRPNET_H
#define SLIRPNET_H

#include <stddef.h>
#include <stdint.h>

uint32_t sn_csum_partial(const uint8_t *buf, size_t len, uint32_t sum);
uint16_t sn_csum_fold(uint32_t sum);
uint16_t sn_checksum(const uint8_t *buf, size_t len, uint32_t sum);

/* Pseudo-header partial sums: IPv4 (RFC 793 §3.1) and IPv6 (RFC 8200 §8.1). */
uint32_t sn_pseudo_sum_v4(const uint8_t *src4, const uint8_t *dst4,
                          uint8_t proto, uint32_t l4_len);
uint32_t sn_pseudo_sum_v6(const uint8_t *src16, const uint8_t *dst16,
                          uint8_t next_header, uint32_t l4_len);

/* Incremental update (RFC 1624 eqn. 3): HC' = ~(~HC + ~m + m'). */
uint16_t sn_csum_update16(uint16_t csum, uint16_t old_word, uint16_t new_word);
uint16_t sn_csum_update32(uint16_t csum, uint32_t old_word, uint32_t new_word);

#endif
