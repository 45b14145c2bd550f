/*
 * A fake of the Vialux ALP-4.x API (the shared library a Vialux DMD is driven through), for tests.
 *
 * Written for this project from the public descriptions of the API (the function prototypes and the numeric
 * values as the ALP4lib and alp4-rs projects publish them); it includes no Vialux file. It exports the ALP calls
 * the driver uses, with the same C signatures, and keeps the state a real ALP keeps: one device, its sequences,
 * a projection. It enforces the call order and the argument ranges and answers with the documented error codes.
 *
 * "Showing" a sequence: AlpProjStart hands every picture, in order, to a display hook (a function pointer set
 * through FakeAlp_SetDisplayHook) as the mirrors' state, packed 1 bit per mirror, row-major from the top-left,
 * the first mirror in the most significant bit (numpy.packbits of the flattened picture), and advances a
 * virtual clock by the picture time. The projection is over when AlpProjStart returns, unless a stall was asked
 * for (FakeAlp_SetStallAfter): then it stays active after that many pictures until halted. In slave mode
 * (ALP_PROJ_MODE = ALP_SLAVE) AlpProjStart shows nothing: each edge on the trigger input (FakeAlp_TriggerIn, the
 * test's or the emulator's signal generator) shows the next picture.
 *
 * Rules that are the fake's own (stricter than the public description, to catch driver bugs): AlpProjStart
 * refuses a sequence whose pictures were not all loaded (ALP_PARM_INVALID) and a start while a projection runs
 * (ALP_NOT_IDLE, where a real ALP in legacy queue mode would replace the waiting sequence); AlpProjWait cannot
 * block, so it answers ALP_NOT_IDLE for a stalled projection where a real ALP would wait.
 *
 * Not thread safe: one caller at a time (the driver calls from one thread).
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#define FAKE_EXPORT __declspec(dllexport)
#else
#define FAKE_EXPORT __attribute__((visibility("default")))
#endif

typedef unsigned long ALP_ID;

/* Numeric values from the public API description (as ALP4lib's header.py lists them). */
enum {
    ALP_OK = 0,
    ALP_DEFAULT = 0,
    ALP_NOT_ONLINE = 1001,
    ALP_NOT_IDLE = 1002,
    ALP_NOT_AVAILABLE = 1003,
    ALP_NOT_READY = 1004,
    ALP_PARM_INVALID = 1005,
    ALP_ADDR_INVALID = 1006,
    ALP_MEMORY_FULL = 1007,
    ALP_SEQ_IN_USE = 1008,
    ALP_DEV_BUSY = 1100,
    ALP_DEV_READY = 1101,
    ALP_DEVICE_NUMBER = 2000,
    ALP_VERSION = 2001,
    ALP_DEV_STATE = 2002,
    ALP_AVAIL_MEMORY = 2003,
    ALP_SYNCH_POLARITY = 2004,
    ALP_TRIGGER_EDGE = 2005,
    ALP_LEVEL_HIGH = 2006,
    ALP_LEVEL_LOW = 2007,
    ALP_EDGE_FALLING = 2008,
    ALP_EDGE_RISING = 2009,
    ALP_DEV_DISPLAY_HEIGHT = 2057,
    ALP_DEV_DISPLAY_WIDTH = 2058,
    ALP_SEQ_REPEAT = 2100,
    ALP_BIN_MODE = 2104,
    ALP_BIN_NORMAL = 2105,
    ALP_BIN_UNINTERRUPTED = 2106,
    ALP_DATA_FORMAT = 2110,
    ALP_DATA_MSB_ALIGN = 0,
    ALP_DATA_LSB_ALIGN = 1,
    ALP_DATA_BINARY_TOPDOWN = 2,
    ALP_DATA_BINARY_BOTTOMUP = 3,
    ALP_BITPLANES = 2200,
    ALP_PICNUM = 2201,
    ALP_PICTURE_TIME = 2203,
    ALP_ILLUMINATE_TIME = 2204,
    ALP_SYNCH_PULSEWIDTH = 2206,
    ALP_MIN_PICTURE_TIME = 2211,
    ALP_PROJ_MODE = 2300,
    ALP_MASTER = 2301,
    ALP_SLAVE = 2302,
    ALP_PROJ_PROGRESS = 2318,
    ALP_FLAG_QUEUE_IDLE = 1,
};

#pragma pack(push, 1)
typedef struct {
    ALP_ID CurrentQueueId;
    ALP_ID SequenceId;
    unsigned long nWaitingSequences;
    unsigned long nSequenceCounter;
    unsigned long nSequenceCounterUnderflow;
    unsigned long nFrameCounter;
    unsigned long nPictureTime;
    unsigned long nFramesPerSubSequence;
    unsigned long nFlags;
} tAlpProjProgress;
#pragma pack(pop)

typedef void (*fake_display_hook)(const unsigned char *packed, long n_bytes, long width, long height, long index,
                                  long long time_us, void *user);

/* ------------------------------------------------------------------------------------------ fault injection */
enum {
    F_DEV_ALLOC, F_DEV_INQUIRE, F_DEV_CONTROL, F_DEV_HALT, F_DEV_FREE, F_SEQ_ALLOC, F_SEQ_CONTROL, F_SEQ_INQUIRE,
    F_SEQ_TIMING, F_SEQ_PUT, F_SEQ_FREE, F_PROJ_CONTROL, F_PROJ_START, F_PROJ_WAIT, F_PROJ_HALT, F_PROJ_INQUIRE_EX,
    F_COUNT
};
static const char *const function_names[F_COUNT] = {
    "AlpDevAlloc", "AlpDevInquire", "AlpDevControl", "AlpDevHalt", "AlpDevFree", "AlpSeqAlloc", "AlpSeqControl",
    "AlpSeqInquire", "AlpSeqTiming", "AlpSeqPut", "AlpSeqFree", "AlpProjControl", "AlpProjStart", "AlpProjWait",
    "AlpProjHalt", "AlpProjInquireEx",
};

#define MAX_SEQUENCES 32
#define DEFAULT_PICTURE_TIME_US 33334L /* the fake's own default for ALP_DEFAULT: 30 pictures a second */

typedef struct {
    int allocated;
    ALP_ID id;
    long bitplanes, picnum, data_format, bin_mode, repeat;
    long illuminate_us, picture_us, synch_delay_us, synch_pulse_us, trigger_delay_us;
    unsigned char *mirrors; /* picnum pictures of frame_bytes each: packed mirror states */
    unsigned char *loaded;  /* one flag per picture: written by AlpSeqPut */
} sequence_t;

static struct {
    /* configuration (FakeAlp_Configure, FakeAlp_SetIdBase) */
    long width, height, serial, min_picture_us, memory_pictures;
    ALP_ID id_base;
    /* behaviour */
    int device_missing;
    long stall_after;
    long pending_fail[F_COUNT];
    long calls[F_COUNT];
    fake_display_hook hook;
    void *hook_user;
    /* the device */
    int allocated;
    ALP_ID device_id;
    ALP_ID next_id;
    long synch_polarity, trigger_edge, proj_mode;
    sequence_t seqs[MAX_SEQUENCES];
    /* the projection */
    int active;
    ALP_ID proj_seq;
    tAlpProjProgress progress;
    long long time_us;
    long pictures_shown;
    long proj_shown; /* pictures of the current projection shown so far */
} fake;

static void free_sequence(sequence_t *s) {
    free(s->mirrors);
    free(s->loaded);
    memset(s, 0, sizeof(*s));
}

static void set_defaults(void) {
    for (int i = 0; i < MAX_SEQUENCES; i++) free_sequence(&fake.seqs[i]);
    memset(&fake, 0, sizeof(fake));
    fake.width = 1024;
    fake.height = 768;
    fake.serial = 12345;
    fake.min_picture_us = 100;
    fake.memory_pictures = 4096;
    fake.id_base = 1;
    fake.stall_after = -1;
}

static int initialised;

static void ensure_initialised(void) {
    if (!initialised) {
        set_defaults();
        initialised = 1;
    }
}

/* Counts the call, applies a pending injected failure; returns nonzero (the code) when the call must fail. */
static long enter(int function) {
    ensure_initialised();
    fake.calls[function]++;
    long code = fake.pending_fail[function];
    fake.pending_fail[function] = 0;
    return code;
}

static long frame_bytes(void) { return (fake.width * fake.height + 7) / 8; }

static long memory_in_use(void) {
    long used = 0;
    for (int i = 0; i < MAX_SEQUENCES; i++)
        if (fake.seqs[i].allocated) used += fake.seqs[i].bitplanes * fake.seqs[i].picnum;
    return used;
}

static int device_ok(ALP_ID device) { return fake.allocated && device == fake.device_id; }

static sequence_t *find_sequence(ALP_ID seq) {
    for (int i = 0; i < MAX_SEQUENCES; i++)
        if (fake.seqs[i].allocated && fake.seqs[i].id == seq) return &fake.seqs[i];
    return NULL;
}

static int in_use(const sequence_t *s) { return fake.active && fake.proj_seq == s->id; }

/* ------------------------------------------------------------------------------------------- the ALP calls */
FAKE_EXPORT long AlpDevAlloc(long DeviceNum, long InitFlag, ALP_ID *DeviceIdPtr) {
    long fail = enter(F_DEV_ALLOC);
    if (fail) return fail;
    if (DeviceIdPtr == NULL) return ALP_ADDR_INVALID;
    if (DeviceNum < 0 || InitFlag != ALP_DEFAULT) return ALP_PARM_INVALID;
    if (fake.device_missing || DeviceNum > 0) return ALP_NOT_ONLINE; /* one device, number 0 (= ALP_DEFAULT) */
    if (fake.allocated) return ALP_NOT_READY;                       /* already allocated */
    fake.allocated = 1;
    fake.device_id = fake.id_base + fake.next_id++;
    fake.synch_polarity = ALP_LEVEL_HIGH;
    fake.trigger_edge = ALP_EDGE_RISING;
    fake.proj_mode = ALP_MASTER;
    memset(&fake.progress, 0, sizeof(fake.progress));
    fake.progress.nFlags = ALP_FLAG_QUEUE_IDLE;
    *DeviceIdPtr = fake.device_id;
    return ALP_OK;
}

FAKE_EXPORT long AlpDevInquire(ALP_ID DeviceId, long InquireType, long *UserVarPtr) {
    long fail = enter(F_DEV_INQUIRE);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    if (UserVarPtr == NULL) return ALP_ADDR_INVALID;
    switch (InquireType) {
    case ALP_DEVICE_NUMBER: *UserVarPtr = fake.serial; return ALP_OK;
    case ALP_VERSION: *UserVarPtr = 4; return ALP_OK;
    case ALP_DEV_STATE: *UserVarPtr = fake.active ? ALP_DEV_BUSY : ALP_DEV_READY; return ALP_OK;
    case ALP_AVAIL_MEMORY: *UserVarPtr = fake.memory_pictures - memory_in_use(); return ALP_OK;
    case ALP_DEV_DISPLAY_WIDTH: *UserVarPtr = fake.width; return ALP_OK;
    case ALP_DEV_DISPLAY_HEIGHT: *UserVarPtr = fake.height; return ALP_OK;
    case ALP_SYNCH_POLARITY: *UserVarPtr = fake.synch_polarity; return ALP_OK;
    case ALP_TRIGGER_EDGE: *UserVarPtr = fake.trigger_edge; return ALP_OK;
    default: return ALP_PARM_INVALID;
    }
}

FAKE_EXPORT long AlpDevControl(ALP_ID DeviceId, long ControlType, long ControlValue) {
    long fail = enter(F_DEV_CONTROL);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    if (fake.active) return ALP_NOT_IDLE;
    if (ControlType == ALP_SYNCH_POLARITY && (ControlValue == ALP_LEVEL_HIGH || ControlValue == ALP_LEVEL_LOW)) {
        fake.synch_polarity = ControlValue;
        return ALP_OK;
    }
    if (ControlType == ALP_TRIGGER_EDGE && (ControlValue == ALP_EDGE_RISING || ControlValue == ALP_EDGE_FALLING)) {
        fake.trigger_edge = ControlValue;
        return ALP_OK;
    }
    return ALP_PARM_INVALID;
}

FAKE_EXPORT long AlpDevHalt(ALP_ID DeviceId) {
    long fail = enter(F_DEV_HALT);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    fake.active = 0;
    fake.progress.nFlags |= ALP_FLAG_QUEUE_IDLE;
    return ALP_OK;
}

FAKE_EXPORT long AlpDevFree(ALP_ID DeviceId) {
    long fail = enter(F_DEV_FREE);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    for (int i = 0; i < MAX_SEQUENCES; i++) free_sequence(&fake.seqs[i]); /* frees everything it holds */
    fake.active = 0;
    fake.allocated = 0;
    fake.device_id = 0;
    return ALP_OK;
}

FAKE_EXPORT long AlpSeqAlloc(ALP_ID DeviceId, long BitPlanes, long PicNum, ALP_ID *SequenceIdPtr) {
    long fail = enter(F_SEQ_ALLOC);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    if (SequenceIdPtr == NULL) return ALP_ADDR_INVALID;
    if (BitPlanes < 1 || BitPlanes > 8 || PicNum < 1) return ALP_PARM_INVALID;
    if (BitPlanes * PicNum > fake.memory_pictures - memory_in_use()) return ALP_MEMORY_FULL;
    sequence_t *s = NULL;
    for (int i = 0; i < MAX_SEQUENCES && s == NULL; i++)
        if (!fake.seqs[i].allocated) s = &fake.seqs[i];
    if (s == NULL) return ALP_MEMORY_FULL;
    s->mirrors = calloc((size_t)PicNum, (size_t)frame_bytes());
    s->loaded = calloc((size_t)PicNum, 1);
    if (s->mirrors == NULL || s->loaded == NULL) {
        free_sequence(s);
        return ALP_MEMORY_FULL;
    }
    s->allocated = 1;
    s->id = fake.id_base + fake.next_id++;
    s->bitplanes = BitPlanes;
    s->picnum = PicNum;
    s->data_format = ALP_DATA_MSB_ALIGN;
    s->bin_mode = ALP_BIN_NORMAL;
    s->repeat = 1;
    s->picture_us = DEFAULT_PICTURE_TIME_US > fake.min_picture_us ? DEFAULT_PICTURE_TIME_US : fake.min_picture_us;
    s->illuminate_us = s->picture_us;
    *SequenceIdPtr = s->id;
    return ALP_OK;
}

FAKE_EXPORT long AlpSeqControl(ALP_ID DeviceId, ALP_ID SequenceId, long ControlType, long ControlValue) {
    long fail = enter(F_SEQ_CONTROL);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    sequence_t *s = find_sequence(SequenceId);
    if (s == NULL) return ALP_PARM_INVALID;
    if (in_use(s)) return ALP_SEQ_IN_USE;
    switch (ControlType) {
    case ALP_DATA_FORMAT:
        if (ControlValue < ALP_DATA_MSB_ALIGN || ControlValue > ALP_DATA_BINARY_BOTTOMUP) return ALP_PARM_INVALID;
        s->data_format = ControlValue;
        return ALP_OK;
    case ALP_BIN_MODE:
        if (ControlValue != ALP_BIN_NORMAL && ControlValue != ALP_BIN_UNINTERRUPTED) return ALP_PARM_INVALID;
        s->bin_mode = ControlValue;
        return ALP_OK;
    case ALP_SEQ_REPEAT:
        if (ControlValue < 1) return ALP_PARM_INVALID;
        s->repeat = ControlValue;
        return ALP_OK;
    default: return ALP_PARM_INVALID;
    }
}

FAKE_EXPORT long AlpSeqInquire(ALP_ID DeviceId, ALP_ID SequenceId, long InquireType, long *UserVarPtr) {
    long fail = enter(F_SEQ_INQUIRE);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    sequence_t *s = find_sequence(SequenceId);
    if (s == NULL) return ALP_PARM_INVALID;
    if (UserVarPtr == NULL) return ALP_ADDR_INVALID;
    switch (InquireType) {
    case ALP_BITPLANES: *UserVarPtr = s->bitplanes; return ALP_OK;
    case ALP_PICNUM: *UserVarPtr = s->picnum; return ALP_OK;
    case ALP_PICTURE_TIME: *UserVarPtr = s->picture_us; return ALP_OK;
    case ALP_ILLUMINATE_TIME: *UserVarPtr = s->illuminate_us; return ALP_OK;
    case ALP_SYNCH_PULSEWIDTH: *UserVarPtr = s->synch_pulse_us; return ALP_OK;
    case ALP_MIN_PICTURE_TIME: *UserVarPtr = fake.min_picture_us; return ALP_OK;
    case ALP_DATA_FORMAT: *UserVarPtr = s->data_format; return ALP_OK;
    case ALP_BIN_MODE: *UserVarPtr = s->bin_mode; return ALP_OK;
    default: return ALP_PARM_INVALID;
    }
}

FAKE_EXPORT long AlpSeqTiming(ALP_ID DeviceId, ALP_ID SequenceId, long IlluminateTime, long PictureTime,
                              long SynchDelay, long SynchPulseWidth, long TriggerInDelay) {
    long fail = enter(F_SEQ_TIMING);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    sequence_t *s = find_sequence(SequenceId);
    if (s == NULL) return ALP_PARM_INVALID;
    if (in_use(s)) return ALP_SEQ_IN_USE;
    if (IlluminateTime < 0 || PictureTime < 0 || SynchDelay < 0 || SynchPulseWidth < 0 || TriggerInDelay < 0)
        return ALP_PARM_INVALID;
    long picture = PictureTime == ALP_DEFAULT ? s->picture_us : PictureTime;
    long illuminate = IlluminateTime == ALP_DEFAULT ? picture : IlluminateTime;
    long pulse = SynchPulseWidth == ALP_DEFAULT ? illuminate : SynchPulseWidth;
    if (picture < fake.min_picture_us || illuminate > picture || SynchDelay + pulse > picture)
        return ALP_PARM_INVALID;
    s->picture_us = picture;
    s->illuminate_us = illuminate;
    s->synch_delay_us = SynchDelay;
    s->synch_pulse_us = pulse;
    s->trigger_delay_us = TriggerInDelay;
    return ALP_OK;
}

/* One mirror's state from the user's data, for the sequence's data format (bit plane 0 of a 1-bit picture). */
static int mirror_on(const unsigned char *picture, long format, long row, long col) {
    long row_bytes = (fake.width + 7) / 8;
    switch (format) {
    case ALP_DATA_BINARY_TOPDOWN: return (picture[row * row_bytes + col / 8] >> (7 - col % 8)) & 1;
    case ALP_DATA_BINARY_BOTTOMUP:
        return (picture[(fake.height - 1 - row) * row_bytes + col / 8] >> (7 - col % 8)) & 1;
    case ALP_DATA_LSB_ALIGN: return picture[row * fake.width + col] & 1;
    default: return (picture[row * fake.width + col] >> 7) & 1; /* ALP_DATA_MSB_ALIGN */
    }
}

static long user_picture_bytes(long format) {
    if (format == ALP_DATA_BINARY_TOPDOWN || format == ALP_DATA_BINARY_BOTTOMUP)
        return (fake.width + 7) / 8 * fake.height; /* rows packed, each padded to whole bytes */
    return fake.width * fake.height;               /* one byte per mirror */
}

FAKE_EXPORT long AlpSeqPut(ALP_ID DeviceId, ALP_ID SequenceId, long PicOffset, long PicLoad, void *UserArrayPtr) {
    long fail = enter(F_SEQ_PUT);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    sequence_t *s = find_sequence(SequenceId);
    if (s == NULL) return ALP_PARM_INVALID;
    if (in_use(s)) return ALP_SEQ_IN_USE;
    if (UserArrayPtr == NULL) return ALP_ADDR_INVALID;
    if (s->bitplanes != 1) return ALP_PARM_INVALID; /* the fake stores binary sequences only */
    long load = PicLoad == ALP_DEFAULT ? s->picnum - PicOffset : PicLoad;
    if (PicOffset < 0 || load < 1 || PicOffset + load > s->picnum) return ALP_PARM_INVALID;
    const unsigned char *source = UserArrayPtr;
    long in_bytes = user_picture_bytes(s->data_format);
    long out_bytes = frame_bytes();
    for (long p = 0; p < load; p++) {
        const unsigned char *picture = source + p * in_bytes;
        unsigned char *mirrors = s->mirrors + (PicOffset + p) * out_bytes;
        memset(mirrors, 0, (size_t)out_bytes);
        for (long row = 0; row < fake.height; row++)
            for (long col = 0; col < fake.width; col++)
                if (mirror_on(picture, s->data_format, row, col)) {
                    long bit = row * fake.width + col;
                    mirrors[bit / 8] |= (unsigned char)(0x80u >> (bit % 8));
                }
        s->loaded[PicOffset + p] = 1;
    }
    return ALP_OK;
}

FAKE_EXPORT long AlpSeqFree(ALP_ID DeviceId, ALP_ID SequenceId) {
    long fail = enter(F_SEQ_FREE);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    sequence_t *s = find_sequence(SequenceId);
    if (s == NULL) return ALP_PARM_INVALID;
    if (in_use(s)) return ALP_SEQ_IN_USE;
    free_sequence(s);
    return ALP_OK;
}

FAKE_EXPORT long AlpProjControl(ALP_ID DeviceId, long ControlType, long ControlValue) {
    long fail = enter(F_PROJ_CONTROL);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    if (fake.active) return ALP_NOT_IDLE;
    if (ControlType == ALP_PROJ_MODE && (ControlValue == ALP_MASTER || ControlValue == ALP_SLAVE)) {
        fake.proj_mode = ControlValue;
        return ALP_OK;
    }
    return ALP_PARM_INVALID;
}

/* Show the projection's next picture: the hook, the counters, the clock; the projection ends after the last. */
static void show_next(sequence_t *s) {
    long total = s->picnum * s->repeat;
    long p = fake.proj_shown % s->picnum;
    if (fake.hook != NULL)
        fake.hook(s->mirrors + p * frame_bytes(), frame_bytes(), fake.width, fake.height, p, fake.time_us,
                  fake.hook_user);
    fake.time_us += s->picture_us;
    fake.pictures_shown++;
    fake.proj_shown++;
    /* the counters name the picture to come: frames left in its iteration, iterations left */
    fake.progress.nSequenceCounter = (unsigned long)(s->repeat - fake.proj_shown / s->picnum);
    fake.progress.nFrameCounter = (unsigned long)(s->picnum - fake.proj_shown % s->picnum);
    if (fake.proj_shown == total) {
        fake.progress.nFrameCounter = 0;
        fake.progress.nSequenceCounter = 0;
        fake.progress.nFlags = ALP_FLAG_QUEUE_IDLE;
        fake.active = 0;
    }
}

FAKE_EXPORT long AlpProjStart(ALP_ID DeviceId, ALP_ID SequenceId) {
    long fail = enter(F_PROJ_START);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    sequence_t *s = find_sequence(SequenceId);
    if (s == NULL) return ALP_PARM_INVALID;
    if (fake.active) return ALP_NOT_IDLE;
    for (long p = 0; p < s->picnum; p++)
        if (!s->loaded[p]) return ALP_PARM_INVALID;
    fake.active = 1;
    fake.proj_seq = s->id;
    memset(&fake.progress, 0, sizeof(fake.progress));
    fake.progress.CurrentQueueId = s->id;
    fake.progress.SequenceId = s->id;
    fake.progress.nPictureTime = (unsigned long)s->picture_us;
    fake.progress.nFramesPerSubSequence = (unsigned long)s->picnum;
    fake.progress.nSequenceCounter = (unsigned long)s->repeat;
    fake.progress.nFrameCounter = (unsigned long)s->picnum;
    fake.proj_shown = 0;
    /* A slave-mode projection shows one picture per trigger-in edge (FakeAlp_TriggerIn): it stays active. */
    if (fake.proj_mode == ALP_SLAVE) return ALP_OK;
    long stall = fake.stall_after;
    while (fake.active) {
        if (stall >= 0 && fake.proj_shown == stall) return ALP_OK; /* stays active: ProjWait never ends */
        show_next(s);
    }
    return ALP_OK;
}

FAKE_EXPORT long AlpProjWait(ALP_ID DeviceId) {
    long fail = enter(F_PROJ_WAIT);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    return fake.active ? ALP_NOT_IDLE : ALP_OK; /* a real ALP blocks here; the fake cannot */
}

FAKE_EXPORT long AlpProjHalt(ALP_ID DeviceId) {
    long fail = enter(F_PROJ_HALT);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    fake.active = 0; /* the counters keep the values they had when the projection stopped */
    fake.progress.nFlags |= ALP_FLAG_QUEUE_IDLE;
    return ALP_OK;
}

FAKE_EXPORT long AlpProjInquireEx(ALP_ID DeviceId, long InquireType, void *UserStructPtr) {
    long fail = enter(F_PROJ_INQUIRE_EX);
    if (fail) return fail;
    if (!device_ok(DeviceId)) return ALP_NOT_AVAILABLE;
    if (InquireType != ALP_PROJ_PROGRESS) return ALP_PARM_INVALID;
    if (UserStructPtr == NULL) return ALP_ADDR_INVALID;
    memcpy(UserStructPtr, &fake.progress, sizeof(fake.progress));
    return ALP_OK;
}

/* ------------------------------------------------------------------------------ the fake's own controls */
static int function_index(const char *name) {
    for (int i = 0; name != NULL && i < F_COUNT; i++)
        if (strcmp(function_names[i], name) == 0) return i;
    return -1;
}

/* Back to the defaults: no device, nothing allocated, counters zero, no faults, no hook. */
FAKE_EXPORT void FakeAlp_Reset(void) {
    initialised = 1;
    set_defaults();
}

/* The emulated device's geometry, serial number, minimum picture time and memory (binary pictures); only while
   no device is allocated. */
FAKE_EXPORT long FakeAlp_Configure(long width, long height, long serial, long min_picture_time_us,
                                   long memory_pictures) {
    ensure_initialised();
    if (fake.allocated) return ALP_NOT_IDLE;
    if (width < 1 || height < 1 || width > 16384 || height > 16384 || min_picture_time_us < 1 ||
        memory_pictures < 1)
        return ALP_PARM_INVALID;
    fake.width = width;
    fake.height = height;
    fake.serial = serial;
    fake.min_picture_us = min_picture_time_us;
    fake.memory_pictures = memory_pictures;
    return ALP_OK;
}

/* Where the ids it hands out start (to show that ids wider than 32 bits pass through a caller unchanged). */
FAKE_EXPORT void FakeAlp_SetIdBase(ALP_ID base) {
    ensure_initialised();
    fake.id_base = base;
}

FAKE_EXPORT void FakeAlp_SetDisplayHook(fake_display_hook hook, void *user) {
    ensure_initialised();
    fake.hook = hook;
    fake.hook_user = user;
}

/* The next call of the named function returns `code` without doing anything; returns -1 for an unknown name. */
FAKE_EXPORT long FakeAlp_FailNext(const char *function_name, long code) {
    ensure_initialised();
    int i = function_index(function_name);
    if (i < 0) return -1;
    fake.pending_fail[i] = code;
    return 0;
}

/* While set, AlpDevAlloc answers ALP_NOT_ONLINE (no device connected). */
FAKE_EXPORT void FakeAlp_SetDeviceMissing(int missing) {
    ensure_initialised();
    fake.device_missing = missing;
}

/* Projections stop advancing after this many pictures and stay active until halted; -1: they finish. */
FAKE_EXPORT void FakeAlp_SetStallAfter(long pictures) {
    ensure_initialised();
    fake.stall_after = pictures < 0 ? -1 : pictures;
}

/* How often the named function was called since the last reset; -1 for an unknown name. */
FAKE_EXPORT long FakeAlp_CallCount(const char *function_name) {
    ensure_initialised();
    int i = function_index(function_name);
    return i < 0 ? -1 : fake.calls[i];
}

FAKE_EXPORT long long FakeAlp_VirtualTimeUs(void) { return fake.time_us; }

FAKE_EXPORT long FakeAlp_PicturesShown(void) { return fake.pictures_shown; }

/* Whether a device is allocated, and how many sequences it holds. */
FAKE_EXPORT int FakeAlp_DeviceAllocated(void) { return fake.allocated; }

FAKE_EXPORT long FakeAlp_SequenceCount(void) {
    long n = 0;
    for (int i = 0; i < MAX_SEQUENCES; i++) n += fake.seqs[i].allocated;
    return n;
}

/* The settings of a sequence as the fake holds them: bitplanes, picnum, data format, bin mode, repeat,
   illuminate, picture, synch delay, synch pulse width, trigger-in delay (10 values); ALP_PARM_INVALID if unknown. */
FAKE_EXPORT long FakeAlp_SequenceSettings(ALP_ID SequenceId, long *out10) {
    sequence_t *s = find_sequence(SequenceId);
    if (s == NULL || out10 == NULL) return ALP_PARM_INVALID;
    long values[10] = {s->bitplanes,     s->picnum,        s->data_format,    s->bin_mode,
                       s->repeat,        s->illuminate_us, s->picture_us,     s->synch_delay_us,
                       s->synch_pulse_us, s->trigger_delay_us};
    memcpy(out10, values, sizeof(values));
    return ALP_OK;
}

/* The id of the sequence of the last AlpProjStart (0 if none) and the device's synch polarity and mode. */
FAKE_EXPORT ALP_ID FakeAlp_LastStartedSequence(void) { return fake.proj_seq; }

/* n_edges edges on the trigger input, in the projection's edge: a slave-mode projection shows one picture per edge
 * (the edges after its last picture are ignored, as are all edges in master mode or when idle). Returns the
 * pictures shown. */
FAKE_EXPORT long FakeAlp_TriggerIn(long n_edges) {
    long shown = 0;
    if (fake.proj_mode != ALP_SLAVE) return 0;
    sequence_t *s = find_sequence(fake.proj_seq);
    while (fake.active && s != NULL && shown < n_edges) {
        show_next(s);
        shown++;
    }
    return shown;
}

FAKE_EXPORT long FakeAlp_TriggerEdge(void) { return fake.trigger_edge; }

FAKE_EXPORT long FakeAlp_SynchPolarity(void) { return fake.synch_polarity; }

FAKE_EXPORT long FakeAlp_ProjMode(void) { return fake.proj_mode; }
