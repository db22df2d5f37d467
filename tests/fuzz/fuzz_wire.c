/* fuzz_wire.c — arbitrary bytes into the wire header decoder (schemas/wire.h).
 *
 * Any input must decode to MS_WIRE_OK or MS_WIRE_MALFORMED with a reason,
 * without crashing, reading out of bounds (ASan) or leaking; the best-effort
 * peek must survive it too. Anything that decodes must re-encode, decode
 * again, and encode to the same bytes (a decoded message is always a valid
 * message), and its payload-frame rules must be answerable.
 * Seeds: tests/fuzz/corpus/wire/ (every message type, all fields and only
 * required ones), written by MS_WIRE_WRITE_CORPUS=DIR test_wire --filter 'wire/round_trip'.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[MS_ERR_SIZE] = "";
    ms_wire_peek peek;
    ms_wire_peek_header(data, size, &peek);
    if (peek.has_id && strlen(peek.id) > MS_WIRE_MAX_ID_BYTES) abort();

    ms_msg m, d;
    ms_wire_status st = ms_wire_decode(data, size, &m, err, sizeof err);
    if (st != MS_WIRE_OK) {
        if (st != MS_WIRE_MALFORMED || err[0] == 0 || m.type != MS_MSG_NONE) abort();
        return 0;
    }
    uint8_t *b1 = NULL, *b2 = NULL;
    size_t l1 = 0, l2 = 0;
    if (ms_wire_encode_buf(&m, &b1, &l1, err, sizeof err) != 0) abort();
    if (ms_wire_decode(b1, l1, &d, err, sizeof err) != MS_WIRE_OK) abort();
    if (d.type != m.type) abort();
    if (ms_wire_encode_buf(&d, &b2, &l2, err, sizeof err) != 0) abort();
    if (l1 != l2 || memcmp(b1, b2, l1) != 0) abort();

    size_t n = ms_wire_payload_frames(&m);
    if (n > MS_WIRE_MAX_PAYLOAD_FRAMES) abort();
    size_t sizes[MS_WIRE_MAX_PAYLOAD_FRAMES];
    for (size_t i = 0; i < n; i++)
        sizes[i] = 1 + i;
    (void)ms_wire_check_payload(&m, sizes, n, err, sizeof err);

    free(b1);
    free(b2);
    ms_msg_fini(&m);
    ms_msg_fini(&d);
    return 0;
}
