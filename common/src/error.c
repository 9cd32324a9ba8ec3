#include <string.h>

#include <flotilla/error.h>

static const char *const fl_messages[] = {
	[FL_EINVAL_JSON - FL_EBASE] = "malformed JSON",
	[FL_ETOODEEP - FL_EBASE] = "JSON nested too deeply",
	[FL_ETOOBIG - FL_EBASE] = "input exceeds its size limit",
	[FL_ESCHEMA - FL_EBASE] = "field missing or of the wrong type",
	[FL_ERANGE - FL_EBASE] = "number out of range",
	[FL_ECONFIG - FL_EBASE] = "bad configuration",
	[FL_EFAILPOINT - FL_EBASE] = "failpoint triggered",
	[FL_EBADSIG - FL_EBASE] = "signature does not verify",
	[FL_ENOSIG - FL_EBASE] = "no signature from a trusted key",
	[FL_EKEY - FL_EBASE] = "bad or unreadable key",
	[FL_EKEYUNKNOWN - FL_EBASE] = "signed by an unknown key",
	[FL_EKEYEXPIRED - FL_EBASE] = "signing key expired",
	[FL_EKEYREVOKED - FL_EBASE] = "signing key revoked",
	[FL_ENOTDELEGATED - FL_EBASE] = "key not delegated for this model",
	[FL_ETHRESHOLD - FL_EBASE] = "too few valid root signatures",
	[FL_EKEYRINGOLD - FL_EBASE] = "keyring older than the installed one",
	[FL_EKEYRINGEXPIRED - FL_EBASE] = "keyring expired",
	[FL_EEXPIRED - FL_EBASE] = "manifest expired",
	[FL_EREPLAY - FL_EBASE] = "sequence lower than one already accepted (replay)",
	[FL_EPAYLOADTYPE - FL_EBASE] = "unexpected payload type",
	[FL_EHASH - FL_EBASE] = "content hash mismatch",
	[FL_ESIZE - FL_EBASE] = "size disagrees with the manifest",
	[FL_ETAR - FL_EBASE] = "unreadable or truncated archive",
	[FL_EENTRYTYPE - FL_EBASE] = "archive entry is not a regular file",
	[FL_EPATH - FL_EBASE] = "unsafe or unexpected path",
	[FL_EDUP - FL_EBASE] = "duplicate entry",
	[FL_EMISSING - FL_EBASE] = "expected entry missing",
	[FL_EINCOMPAT - FL_EBASE] = "not compatible with this device",
	[FL_ENOSPACE - FL_EBASE] = "not enough disk space",
	[FL_EFORMAT - FL_EBASE] = "bad file format",
	[FL_EUNSUPPORTED - FL_EBASE] = "unsupported feature",
	[FL_ESTATE - FL_EBASE] = "not allowed in the current state",
	[FL_EACCEPT - FL_EBASE] = "acceptance test failed",
	[FL_ETIMEOUT - FL_EBASE] = "timed out",
	[FL_EPROTO - FL_EBASE] = "protocol violation",
	[FL_EDB - FL_EBASE] = "database error",
	[FL_ENET - FL_EBASE] = "network error",
	[FL_EBUSY - FL_EBASE] = "busy",
	[FL_ECRASH - FL_EBASE] = "process crashed",
};

const char *fl_strerror(int err)
{
	if (err == 0)
		return "success";
	if (err > 0)
		return "unknown positive code";
	int code = -err;
	if (code > FL_EBASE && code < FL_ELAST) {
		const char *m = fl_messages[code - FL_EBASE];
		return m ? m : "unknown Flotilla error";
	}
	if (code >= FL_EBASE)
		return "unknown Flotilla error";
	/* strerror() is not thread-safe in theory; strerrordesc_np (glibc 2.32+) is. */
	const char *m = strerrordesc_np(code);
	return m ? m : "unknown error";
}
