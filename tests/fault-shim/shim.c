/*
 * p11kms PKCS#11 fault shim (test-only)
 * =====================================
 *
 * A tiny PKCS#11 module that forwards every call to a real module (SoftHSM2 by
 * default) and fails chosen calls on command, so that integration tests can
 * simulate a sick or dead HSM. Used by tests/hsm_faults.rs, which builds it at
 * run time:
 *
 *     cc -shared -fPIC -O1 -o $TMP/libp11kms-shim.so tests/fault-shim/shim.c -ldl
 *
 * Self-contained: it declares the few PKCS#11 types it needs itself (no
 * pkcs11.h is required). The layout of CK_FUNCTION_LIST is the PKCS#11 v2.40
 * one: a CK_VERSION followed by 68 function pointers in the order of the
 * SHIM_FUNCTIONS list below. If a standard header is at hand, the layout can be
 * checked at compile time (the test does this when libp11-kit-dev is
 * installed; nothing is linked or produced):
 *
 *     cc -fsyntax-only -DP11KMS_SHIM_CHECK_LAYOUT -I/usr/include/p11-kit-1 shim.c
 *
 * Environment (read once, when the module's C_GetFunctionList is first called):
 *   P11KMS_SHIM_TARGET   the real module (default /usr/lib/softhsm/libsofthsm2.so)
 *   P11KMS_SHIM_CONTROL  a directory; the files in it select the faults. Without
 *                        it the shim is a pure pass-through.
 *
 * Control files (checked with access() on every overridden call, so a test can
 * create and remove them while the module is loaded):
 *   dead                  every overridden function returns CKR_DEVICE_ERROR.
 *   fail_<C_Function>     that function (e.g. fail_C_GetSessionInfo) fails; it
 *                         returns the CK_RV written in the file (strtoul base 0,
 *                         e.g. "0xb3"), or CKR_DEVICE_ERROR if the file is empty.
 *   burst_<C_Function>    a burst of faults: the file holds "<CK_RV> [<n>]" (n
 *                         defaults to 1). The next call of that function consumes
 *                         (unlinks) the file and fails with CK_RV, and so do the
 *                         n - 1 calls of it after that; then it works again. Each
 *                         injected fault appends the function name to the file
 *                         injected.log in the control directory.
 *   delay_<C_Function>    every call of that function first sleeps for the number
 *                         of milliseconds written in the file (a stalled device),
 *                         then proceeds (faults included).
 *   delay_skips_length_queries
 *                         with it, a C_Encrypt / C_Decrypt that only asks for the
 *                         output length (a NULL output buffer, PKCS#11 2.40
 *                         section 5.2) is not delayed: a device whose client
 *                         library answers length queries itself. Without it the
 *                         delay applies to every call, length queries included.
 *   decrypt_general_error C_Decrypt returns CKR_GENERAL_ERROR, which is what
 *                         SoftHSM2 answers for a GCM tag failure.
 *   reset                 consumed (unlinked) by the next overridden call, which
 *                         first calls the real C_CloseAllSessions on the last
 *                         slot a session was opened on and then proceeds: a
 *                         device reset (every session closed, the user logged
 *                         out, every object handle invalidated).
 *   oaep_sha256_as_sha1   C_EncryptInit / C_DecryptInit with CKM_RSA_PKCS_OAEP,
 *                         SHA-256 and MGF1-SHA-256 go to the real module as
 *                         OAEP with SHA-1 and MGF1-SHA-1 (which SoftHSM2 2.6
 *                         does), and each such call appends its function name
 *                         to the file oaep_sha256.log in the control directory.
 *                         It stands in for a device that does OAEP-SHA-256:
 *                         the daemon's own round trips work and its mechanism
 *                         choice is visible, but the ciphertexts are OAEP-SHA-1
 *                         (no other OAEP-SHA-256 implementation can open them).
 * Precedence: delay (then the rest), reset, dead, burst_<C_Function>,
 * fail_<C_Function>, decrypt_general_error.
 *
 * Overridden functions: C_OpenSession, C_Login, C_GetSessionInfo,
 * C_GetAttributeValue, C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal,
 * C_EncryptInit, C_Encrypt, C_EncryptUpdate, C_EncryptFinal, C_DecryptInit,
 * C_Decrypt, C_DecryptUpdate, C_DecryptFinal, C_GenerateKey, C_DestroyObject,
 * C_GenerateRandom. Everything else (C_Initialize, C_CloseSession, ...) goes
 * straight to the real module.
 *
 * A failed single-part C_Encrypt / C_Decrypt ends the operation, as PKCS#11
 * says it must: the shim first runs the real call into a scratch buffer (wiped
 * and freed) so the real session has no operation left active, then returns
 * the fault. Multi-part Update/Final faults do not do this (p11kms does not
 * use them).
 *
 * Test tokens only: this is not a security boundary and must never be
 * configured as a production module.
 */

#include <stddef.h>

typedef unsigned long ck_ulong;
typedef ck_ulong ck_rv;
typedef void (*shim_fn)(void);

struct shim_version {
    unsigned char major;
    unsigned char minor;
};

/* CK_FUNCTION_LIST, PKCS#11 v2.40 section 5.16 order. Do not reorder. */
#define SHIM_FUNCTIONS(X)                                                        \
    X(C_Initialize) X(C_Finalize) X(C_GetInfo) X(C_GetFunctionList)              \
    X(C_GetSlotList) X(C_GetSlotInfo) X(C_GetTokenInfo) X(C_GetMechanismList)    \
    X(C_GetMechanismInfo) X(C_InitToken) X(C_InitPIN) X(C_SetPIN)                \
    X(C_OpenSession) X(C_CloseSession) X(C_CloseAllSessions) X(C_GetSessionInfo) \
    X(C_GetOperationState) X(C_SetOperationState) X(C_Login) X(C_Logout)         \
    X(C_CreateObject) X(C_CopyObject) X(C_DestroyObject) X(C_GetObjectSize)      \
    X(C_GetAttributeValue) X(C_SetAttributeValue) X(C_FindObjectsInit)           \
    X(C_FindObjects) X(C_FindObjectsFinal) X(C_EncryptInit) X(C_Encrypt)         \
    X(C_EncryptUpdate) X(C_EncryptFinal) X(C_DecryptInit) X(C_Decrypt)           \
    X(C_DecryptUpdate) X(C_DecryptFinal) X(C_DigestInit) X(C_Digest)             \
    X(C_DigestUpdate) X(C_DigestKey) X(C_DigestFinal) X(C_SignInit) X(C_Sign)    \
    X(C_SignUpdate) X(C_SignFinal) X(C_SignRecoverInit) X(C_SignRecover)         \
    X(C_VerifyInit) X(C_Verify) X(C_VerifyUpdate) X(C_VerifyFinal)               \
    X(C_VerifyRecoverInit) X(C_VerifyRecover) X(C_DigestEncryptUpdate)           \
    X(C_DecryptDigestUpdate) X(C_SignEncryptUpdate) X(C_DecryptVerifyUpdate)     \
    X(C_GenerateKey) X(C_GenerateKeyPair) X(C_WrapKey) X(C_UnwrapKey)            \
    X(C_DeriveKey) X(C_SeedRandom) X(C_GenerateRandom) X(C_GetFunctionStatus)    \
    X(C_CancelFunction) X(C_WaitForSlotEvent)

enum {
#define SHIM_INDEX(name) F_##name,
    SHIM_FUNCTIONS(SHIM_INDEX)
#undef SHIM_INDEX
    F_COUNT
};

_Static_assert(F_COUNT == 68, "PKCS#11 v2.40 CK_FUNCTION_LIST has 68 functions");

struct shim_function_list {
    struct shim_version version;
    shim_fn fn[F_COUNT];
};

#ifdef P11KMS_SHIM_CHECK_LAYOUT
/* Compile-time check against a standard header; produces no code. */
#include <p11-kit/pkcs11.h>
#define SHIM_CHECK(name)                                                          \
    _Static_assert(offsetof(CK_FUNCTION_LIST, name) ==                            \
                       offsetof(struct shim_function_list, fn) +                  \
                           F_##name * sizeof(shim_fn),                            \
                   "CK_FUNCTION_LIST offset of " #name);
SHIM_FUNCTIONS(SHIM_CHECK)
_Static_assert(sizeof(CK_FUNCTION_LIST) == sizeof(struct shim_function_list),
               "CK_FUNCTION_LIST size");
_Static_assert(offsetof(CK_FUNCTION_LIST, version) == 0, "version first");
#else /* the module itself */

#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CKR_OK 0x0UL
#define CKR_GENERAL_ERROR 0x5UL
#define CKR_ARGUMENTS_BAD 0x7UL
#define CKR_DEVICE_ERROR 0x30UL
#define CKR_BUFFER_TOO_SMALL 0x150UL

#define EXPORT __attribute__((visibility("default")))

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static ck_rv load_rv = CKR_GENERAL_ERROR;
static struct shim_function_list *real;
static struct shim_function_list mine;
static char control[PATH_MAX];
static ck_ulong last_slot;
static int have_slot;

#define REAL(name) (real->fn[F_##name])

static int control_file(const char *name, char *path, size_t len) {
    if (!control[0])
        return 0;
    int n = snprintf(path, len, "%s/%s", control, name);
    return n > 0 && (size_t)n < len && access(path, F_OK) == 0;
}

static void maybe_reset(void) {
    char path[PATH_MAX];
    if (!control_file("reset", path, sizeof path) || unlink(path) != 0)
        return; /* absent, or another thread consumed it */
    if (__atomic_load_n(&have_slot, __ATOMIC_ACQUIRE)) {
        ck_ulong slot = __atomic_load_n(&last_slot, __ATOMIC_RELAXED);
        ((ck_rv (*)(ck_ulong))REAL(C_CloseAllSessions))(slot);
    }
}

/* Reads the control file at `path` into `buf` (NUL-terminated); bytes read, or -1. */
static ssize_t read_control(const char *path, char *buf, size_t len) {
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    return n;
}

/* Sleeps as delay_<name> says, if it exists. */
static void maybe_delay(const char *name) {
    char path[PATH_MAX], file[128], buf[64];
    snprintf(file, sizeof file, "delay_%s", name);
    if (!control_file(file, path, sizeof path) || read_control(path, buf, sizeof buf) <= 0)
        return;
    unsigned long ms = strtoul(buf, NULL, 0);
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* Bursts in progress: function name, fault, calls still to fail. */
#define MAX_BURSTS 16
static struct {
    const char *name;
    ck_rv rv;
    unsigned long left;
} bursts[MAX_BURSTS];
static pthread_mutex_t bursts_lock = PTHREAD_MUTEX_INITIALIZER;

static void log_injected(const char *name) {
    char path[PATH_MAX], line[64];
    int n = snprintf(path, sizeof path, "%s/injected.log", control);
    if (n <= 0 || (size_t)n >= sizeof path)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0)
        return;
    int len = snprintf(line, sizeof line, "%s\n", name);
    if (write(fd, line, (size_t)len) < 0) {
        /* best effort */
    }
    close(fd);
}

/* The burst fault for this call of `name` (a static string), or CKR_OK. */
static ck_rv burst(const char *name) {
    char path[PATH_MAX], file[128], buf[64];
    ck_rv rv = CKR_OK;
    snprintf(file, sizeof file, "burst_%s", name);
    int fresh = control_file(file, path, sizeof path) && read_control(path, buf, sizeof buf) > 0 &&
                unlink(path) == 0; /* only one call consumes it */
    pthread_mutex_lock(&bursts_lock);
    int slot = -1;
    for (int i = 0; i < MAX_BURSTS; i++) {
        if (bursts[i].name == name || (slot < 0 && bursts[i].left == 0))
            slot = i;
        if (bursts[i].name == name)
            break;
    }
    if (fresh && slot >= 0) {
        char *end;
        ck_rv v = strtoul(buf, &end, 0);
        unsigned long n = strtoul(end, NULL, 0);
        bursts[slot].name = name;
        bursts[slot].rv = v != CKR_OK ? v : CKR_DEVICE_ERROR;
        bursts[slot].left = n > 0 ? n : 1;
    }
    if (slot >= 0 && bursts[slot].name == name && bursts[slot].left > 0) {
        bursts[slot].left--;
        rv = bursts[slot].rv;
    }
    pthread_mutex_unlock(&bursts_lock);
    if (rv != CKR_OK)
        log_injected(name);
    return rv;
}

/* The fault to inject into `name` (a string literal), or CKR_OK to forward the call;
 * `delay` says whether delay_<name> applies to this call. */
static ck_rv fault_delayed(const char *name, int delay) {
    char path[PATH_MAX], file[128], buf[64];
    ck_rv injected;
    if (delay)
        maybe_delay(name);
    maybe_reset();
    if (control_file("dead", path, sizeof path))
        return CKR_DEVICE_ERROR;
    if ((injected = burst(name)) != CKR_OK)
        return injected;
    snprintf(file, sizeof file, "fail_%s", name);
    if (control_file(file, path, sizeof path)) {
        ck_rv rv = CKR_DEVICE_ERROR;
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = 0;
                char *end;
                unsigned long v = strtoul(buf, &end, 0);
                if (end != buf && v != CKR_OK)
                    rv = v;
            }
        }
        return rv;
    }
    return CKR_OK;
}

/* The fault to inject into `name`, the call delayed as delay_<name> says. */
static ck_rv fault(const char *name) { return fault_delayed(name, 1); }

/* Whether a single-part call with output buffer `out` is delayed: always, unless it is a
 * length query (NULL buffer) and delay_skips_length_queries exists. */
static int delays_call(const unsigned char *out) {
    char path[PATH_MAX];
    return out != NULL || !control_file("delay_skips_length_queries", path, sizeof path);
}

/* Forwarders that consult fault() first. */
#define SHIM(name, params, args)                                                  \
    static ck_rv shim_##name params {                                             \
        ck_rv rv = fault(#name);                                                  \
        if (rv != CKR_OK)                                                         \
            return rv;                                                            \
        return ((ck_rv(*) params)REAL(name)) args;                                \
    }

typedef unsigned char uchar;

SHIM(C_Login, (ck_ulong s, ck_ulong user, uchar *pin, ck_ulong len), (s, user, pin, len))
SHIM(C_GetSessionInfo, (ck_ulong s, void *info), (s, info))
SHIM(C_GetAttributeValue, (ck_ulong s, ck_ulong obj, void *tmpl, ck_ulong n), (s, obj, tmpl, n))
SHIM(C_FindObjectsInit, (ck_ulong s, void *tmpl, ck_ulong n), (s, tmpl, n))
SHIM(C_FindObjects, (ck_ulong s, ck_ulong *objs, ck_ulong max, ck_ulong *n), (s, objs, max, n))
SHIM(C_FindObjectsFinal, (ck_ulong s), (s))
SHIM(C_EncryptUpdate, (ck_ulong s, uchar *in, ck_ulong inl, uchar *out, ck_ulong *outl),
     (s, in, inl, out, outl))
SHIM(C_EncryptFinal, (ck_ulong s, uchar *out, ck_ulong *outl), (s, out, outl))
SHIM(C_DecryptUpdate, (ck_ulong s, uchar *in, ck_ulong inl, uchar *out, ck_ulong *outl),
     (s, in, inl, out, outl))
SHIM(C_DecryptFinal, (ck_ulong s, uchar *out, ck_ulong *outl), (s, out, outl))
SHIM(C_GenerateKey, (ck_ulong s, void *mech, void *tmpl, ck_ulong n, ck_ulong *key),
     (s, mech, tmpl, n, key))
SHIM(C_DestroyObject, (ck_ulong s, ck_ulong obj), (s, obj))
SHIM(C_GenerateRandom, (ck_ulong s, uchar *out, ck_ulong len), (s, out, len))

#define CKM_RSA_PKCS_OAEP 0x9UL
#define CKM_SHA_1 0x220UL
#define CKM_SHA256 0x250UL
#define CKG_MGF1_SHA1 0x1UL
#define CKG_MGF1_SHA256 0x2UL

struct shim_mechanism {
    ck_ulong mechanism;
    void *parameter;
    ck_ulong parameter_len;
};

struct shim_oaep_params {
    ck_ulong hash_alg;
    ck_ulong mgf;
    ck_ulong source;
    void *source_data;
    ck_ulong source_data_len;
};

/* Under oaep_sha256_as_sha1: an OAEP-SHA-256 mechanism rewritten into *m / *p
 * as OAEP-SHA-1, with the call logged; otherwise `mech` itself. */
static void *oaep_as_sha1(const char *name, void *mech, struct shim_mechanism *m,
                          struct shim_oaep_params *p) {
    char path[PATH_MAX];
    const struct shim_mechanism *in = mech;
    if (!in || in->mechanism != CKM_RSA_PKCS_OAEP || !in->parameter ||
        in->parameter_len != sizeof *p)
        return mech;
    const struct shim_oaep_params *ip = in->parameter;
    if (ip->hash_alg != CKM_SHA256 || ip->mgf != CKG_MGF1_SHA256 ||
        !control_file("oaep_sha256_as_sha1", path, sizeof path))
        return mech;
    *p = *ip;
    p->hash_alg = CKM_SHA_1;
    p->mgf = CKG_MGF1_SHA1;
    *m = *in;
    m->parameter = p;
    int n = snprintf(path, sizeof path, "%s/oaep_sha256.log", control);
    if (n > 0 && (size_t)n < sizeof path) {
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            char line[64];
            int len = snprintf(line, sizeof line, "%s\n", name);
            if (write(fd, line, (size_t)len) < 0) {
                /* the log is best effort */
            }
            close(fd);
        }
    }
    return m;
}

/* C_EncryptInit and C_DecryptInit: SHIM forwarders whose mechanism goes through
 * oaep_as_sha1 first. */
#define SHIM_OAEP_INIT(name)                                                      \
    static ck_rv shim_##name(ck_ulong s, void *mech, ck_ulong key) {              \
        struct shim_mechanism m;                                                  \
        struct shim_oaep_params p;                                                \
        ck_rv rv = fault(#name);                                                  \
        if (rv != CKR_OK)                                                         \
            return rv;                                                            \
        return ((ck_rv(*)(ck_ulong, void *, ck_ulong))REAL(name))(                \
            s, oaep_as_sha1(#name, mech, &m, &p), key);                           \
    }

SHIM_OAEP_INIT(C_EncryptInit)
SHIM_OAEP_INIT(C_DecryptInit)

static ck_rv shim_C_OpenSession(ck_ulong slot, ck_ulong flags, void *app, void *notify,
                                ck_ulong *session) {
    ck_rv rv = fault("C_OpenSession");
    if (rv != CKR_OK)
        return rv;
    rv = ((ck_rv(*)(ck_ulong, ck_ulong, void *, void *, ck_ulong *))REAL(C_OpenSession))(
        slot, flags, app, notify, session);
    if (rv == CKR_OK) {
        __atomic_store_n(&last_slot, slot, __ATOMIC_RELAXED);
        __atomic_store_n(&have_slot, 1, __ATOMIC_RELEASE);
    }
    return rv;
}

typedef ck_rv (*single_part)(ck_ulong, uchar *, ck_ulong, uchar *, ck_ulong *);

/* Run the real single-part call into a scratch buffer so the real operation
 * ends (success or failure both end it), then forget the output. */
static void finish_real(single_part f, ck_ulong s, uchar *in, ck_ulong inl) {
    ck_ulong len = inl + 256;
    for (int tries = 0; tries < 2; tries++) {
        uchar *scratch = calloc(1, len);
        if (!scratch)
            return;
        ck_ulong outl = len;
        ck_rv rv = f(s, in, inl, scratch, &outl);
        memset(scratch, 0, len);
        free(scratch);
        if (rv != CKR_BUFFER_TOO_SMALL)
            return;
        len = outl + 256;
    }
}

static ck_rv shim_C_Encrypt(ck_ulong s, uchar *in, ck_ulong inl, uchar *out, ck_ulong *outl) {
    ck_rv rv = fault_delayed("C_Encrypt", delays_call(out));
    if (rv != CKR_OK) {
        finish_real((single_part)REAL(C_Encrypt), s, in, inl);
        return rv;
    }
    return ((single_part)REAL(C_Encrypt))(s, in, inl, out, outl);
}

static ck_rv shim_C_Decrypt(ck_ulong s, uchar *in, ck_ulong inl, uchar *out, ck_ulong *outl) {
    char path[PATH_MAX];
    ck_rv rv = fault_delayed("C_Decrypt", delays_call(out));
    if (rv == CKR_OK && control_file("decrypt_general_error", path, sizeof path))
        rv = CKR_GENERAL_ERROR;
    if (rv != CKR_OK) {
        finish_real((single_part)REAL(C_Decrypt), s, in, inl);
        return rv;
    }
    return ((single_part)REAL(C_Decrypt))(s, in, inl, out, outl);
}

EXPORT ck_rv C_GetFunctionList(struct shim_function_list **list);

static void load(void) {
    const char *target = getenv("P11KMS_SHIM_TARGET");
    const char *ctl = getenv("P11KMS_SHIM_CONTROL");
    if (!target || !*target)
        target = "/usr/lib/softhsm/libsofthsm2.so";
    if (ctl && strlen(ctl) < sizeof control)
        strcpy(control, ctl);
    void *h = dlopen(target, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "p11kms-shim: dlopen(%s): %s\n", target, dlerror());
        return;
    }
    ck_rv (*get)(struct shim_function_list **) =
        (ck_rv(*)(struct shim_function_list **))dlsym(h, "C_GetFunctionList");
    if (!get) {
        fprintf(stderr, "p11kms-shim: %s has no C_GetFunctionList\n", target);
        return;
    }
    ck_rv rv = get(&real);
    if (rv != CKR_OK || !real) {
        fprintf(stderr, "p11kms-shim: C_GetFunctionList of %s failed: 0x%lx\n", target, rv);
        load_rv = rv != CKR_OK ? rv : CKR_GENERAL_ERROR;
        return;
    }
    memcpy(&mine, real, sizeof mine);
    /* Report v2.40 at most: this list has exactly the v2.40 layout. */
    if (mine.version.major > 2 || (mine.version.major == 2 && mine.version.minor > 40)) {
        mine.version.major = 2;
        mine.version.minor = 40;
    }
    mine.fn[F_C_GetFunctionList] = (shim_fn)C_GetFunctionList;
#define OVERRIDE(name) mine.fn[F_##name] = (shim_fn)shim_##name;
    OVERRIDE(C_OpenSession)
    OVERRIDE(C_Login)
    OVERRIDE(C_GetSessionInfo)
    OVERRIDE(C_GetAttributeValue)
    OVERRIDE(C_FindObjectsInit)
    OVERRIDE(C_FindObjects)
    OVERRIDE(C_FindObjectsFinal)
    OVERRIDE(C_EncryptInit)
    OVERRIDE(C_Encrypt)
    OVERRIDE(C_EncryptUpdate)
    OVERRIDE(C_EncryptFinal)
    OVERRIDE(C_DecryptInit)
    OVERRIDE(C_Decrypt)
    OVERRIDE(C_DecryptUpdate)
    OVERRIDE(C_DecryptFinal)
    OVERRIDE(C_GenerateKey)
    OVERRIDE(C_DestroyObject)
    OVERRIDE(C_GenerateRandom)
#undef OVERRIDE
    load_rv = CKR_OK;
}

EXPORT ck_rv C_GetFunctionList(struct shim_function_list **list) {
    if (!list)
        return CKR_ARGUMENTS_BAD;
    pthread_once(&load_once, load);
    if (load_rv != CKR_OK)
        return load_rv;
    *list = &mine;
    return CKR_OK;
}

#endif /* P11KMS_SHIM_CHECK_LAYOUT */
