/** Where things are, from this file's place in build/test/support/ once compiled. */
import { fileURLToPath } from "node:url";

/** clients/node */
export const PACKAGE_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
/** The gateway's repository. */
export const REPO_ROOT = fileURLToPath(new URL("../../../../../", import.meta.url));
