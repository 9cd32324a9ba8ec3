/* Error codes shared by every Flotilla module.
 *
 * Convention (whole codebase): functions return int; 0 or a positive count on
 * success, a negative errno value or a negative project code (-FL_E..., all
 * below -1000) on failure. fl_strerror() names every code, errno or project. */
#ifndef FLOTILLA_ERROR_H
#define FLOTILLA_ERROR_H

enum fl_error {
	FL_EBASE = 1000,
	FL_EINVAL_JSON,      /* malformed JSON */
	FL_ETOODEEP,         /* JSON nested deeper than allowed */
	FL_ETOOBIG,          /* input larger than its stated limit */
	FL_ESCHEMA,          /* JSON well formed but a field is missing or of the wrong type */
	FL_ERANGE,           /* a number outside its allowed range */
	FL_ECONFIG,          /* config file syntax error or unknown key */
	FL_EFAILPOINT,       /* a failpoint asked this call to fail */
	FL_EBADSIG,          /* signature does not verify */
	FL_ENOSIG,           /* no signature from a trusted key */
	FL_EKEY,             /* key file unreadable or of the wrong kind */
	FL_EKEYUNKNOWN,      /* signed by a key the trust store does not know */
	FL_EKEYEXPIRED,      /* signing key expired */
	FL_EKEYREVOKED,      /* signing key revoked */
	FL_ENOTDELEGATED,    /* key not delegated for this model name */
	FL_ETHRESHOLD,       /* fewer valid root signatures than the threshold */
	FL_EKEYRINGOLD,      /* keyring version older than the one installed */
	FL_EKEYRINGEXPIRED,  /* keyring expired */
	FL_EEXPIRED,         /* manifest expired */
	FL_EREPLAY,          /* manifest sequence below the highest accepted */
	FL_EPAYLOADTYPE,     /* DSSE payload type is not the expected one */
	FL_EHASH,            /* content hash mismatch */
	FL_ESIZE,            /* size disagrees with the manifest */
	FL_ETAR,             /* tar archive unreadable or truncated */
	FL_EENTRYTYPE,       /* tar entry that is not a regular file */
	FL_EPATH,            /* unsafe or unexpected path */
	FL_EDUP,             /* duplicate entry */
	FL_EMISSING,         /* expected file or entry missing */
	FL_EINCOMPAT,        /* bundle does not fit this device */
	FL_ENOSPACE,         /* not enough disk space */
	FL_EFORMAT,          /* file format error (GGUF, chunk index, ...) */
	FL_EUNSUPPORTED,     /* valid but unsupported feature */
	FL_ESTATE,           /* operation not allowed in the current state */
	FL_EACCEPT,          /* acceptance test failed */
	FL_ETIMEOUT,         /* operation timed out */
	FL_EPROTO,           /* protocol violation by a peer */
	FL_EDB,              /* SQLite / store error */
	FL_ENET,             /* network / transport error */
	FL_EBUSY,            /* queue full or resource busy */
	FL_ECRASH,           /* child process crashed */
	FL_ELAST
};

/* Name of any return code: negative errno (strerror text), negative project
 * code, or 0 ("success"). Never NULL; the string is static. Thread-safe. */
const char *fl_strerror(int err);

#endif
