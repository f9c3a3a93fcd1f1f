"""Optional integrations built on the public hooks (:mod:`tgext.asyncjob.hooks`)."""
